"""`lightning-prune search` / `report` as a user runs them: Ctrl-C, then resume."""

from __future__ import annotations

import signal

from lightning_prune.search import load_study
from mlflow import MlflowClient
from optuna.trial import TrialState

from lightning_prune.cli import main
from tests.search_helpers import StudyWatcher, cli, tiny, wait_for


def test_ctrl_c_marks_the_running_trial_and_the_same_command_resumes(tmp_path, monkeypatch, capsys):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    args = tiny(tmp_path, "search.study_name=cli", "search.n_trials=2", "search.pruner.kind=none")
    slow = cli("search", *args, "trainer.max_epochs=200", cwd=tmp_path)
    try:
        running = wait_for(StudyWatcher(storage, "cli").running, 120, what="a running trial")
        slow.send_signal(signal.SIGINT)
        out, _ = slow.communicate(timeout=120)
    finally:
        slow.kill()
    assert slow.returncode == 130, out
    assert "run the same command again to resume" in out
    trial = load_study(storage, "cli").trials[running.number]
    assert trial.state == TrialState.FAIL and trial.user_attrs["interrupted"] is True
    assert "interrupted" in trial.user_attrs["fail_reason"]
    run = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(trial.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED" and run.data.tags["trial_state"] == "FAIL"

    # The same command resumes (in this process, to save an interpreter start).
    monkeypatch.chdir(tmp_path)
    assert main(["search", *args]) == 0
    study = load_study(storage, "cli")
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 2  # interrupted: not counted
    capsys.readouterr()
    assert main(["report", *args]) == 0
    out = capsys.readouterr().out
    best = study.best_trial
    assert "feasible trials" in out and f"{best.user_attrs['val_acc']:.4f}" in out
    assert "lightning-prune ui" in out
