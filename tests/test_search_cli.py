"""`lightning-prune search` / `report` as a user runs them: Ctrl-C, then resume."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

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
    assert "Run the same command again to add search.n_trials more" in out
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


def test_sigterm_to_the_search_ends_the_trial_and_the_study_run_and_exits_143(tmp_path):
    """What a scheduler (Slurm, Kubernetes, `kill`) sends: nothing is left RUNNING."""
    storage, uri = f"sqlite:///{tmp_path}/optuna.db", f"sqlite:///{tmp_path}/mlflow.db"
    args = tiny(tmp_path, "search.study_name=term", "search.n_trials=2", "search.pruner.kind=none",
                "search.dense_reference=false")  # fmt: skip
    slow = cli("search", *args, "trainer.max_epochs=200", cwd=tmp_path)
    try:
        running = wait_for(StudyWatcher(storage, "term").running, 120, what="a running trial")
        slow.send_signal(signal.SIGTERM)  # the main process only, not its group
        out, _ = slow.communicate(timeout=120)
    finally:
        slow.kill()
    assert slow.returncode == 143, out
    assert "SIGTERM: stopping after the running trial is recorded" in out
    trial = load_study(storage, "term").trials[running.number]
    assert trial.state == TrialState.FAIL and trial.user_attrs["interrupted"] is True
    assert "interrupted (SIGTERM)" in trial.user_attrs["fail_reason"]
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("lightning-prune").experiment_id
    runs = {r.data.tags.get("job"): r for r in client.search_runs([experiment])}
    assert runs["search-trial"].info.status == "KILLED"
    assert runs["search"].info.status == "KILLED"
    assert all(r.info.status != "RUNNING" for r in client.search_runs([experiment]))


def _signal_training(tmp_path, signum: int) -> tuple[subprocess.Popen, str, str]:
    """Start `train`, send `signum` once it logs metrics; (process, output, tracking URI)."""
    args = tiny(tmp_path, "pruning=magnitude_gradual", "trainer.max_epochs=500")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    MlflowClient(uri).search_experiments()  # the store exists before both sides open it
    # a shell's background job inherits SIGINT ignored; a terminal's command does not
    default_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    slow = cli("train", *args, cwd=tmp_path, preexec_fn=default_sigint)
    try:
        # metrics logged: fit runs, so Lightning's signal handling is in place
        wait_for(lambda: (run := _a_running_run(uri)) and run.data.metrics, 120, what="training")
        slow.send_signal(signum)
        out, _ = slow.communicate(timeout=120)
    finally:
        slow.kill()
    return slow, out, uri


def test_sigterm_to_train_exits_143_and_ends_its_run(tmp_path):
    """Lightning answers SIGTERM with a bare SystemExit (exit code 0); the CLI says 143."""
    slow, out, uri = _signal_training(tmp_path, signal.SIGTERM)
    assert slow.returncode == 143, out
    assert "train: error: stopped by SIGTERM" in out
    assert _a_running_run(uri) is None


def test_ctrl_c_to_train_exits_130_and_ends_its_run_killed(tmp_path):
    """Lightning answers Ctrl-C with a bare exit(1); the CLI says so and exits 130."""
    slow, out, uri = _signal_training(tmp_path, signal.SIGINT)
    assert slow.returncode == 130, out
    assert "train: error: interrupted (Ctrl-C)" in out
    assert _a_running_run(uri) is None
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("lightning-prune").experiment_id
    assert [r.info.status for r in client.search_runs([experiment])] == ["KILLED"]


def _a_running_run(uri: str):
    """The first RUNNING run of the store, None when there is none (or no store yet)."""
    if not Path(uri.removeprefix("sqlite:///")).exists():
        return None
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("lightning-prune")
    if experiment is None:
        return None
    runs = client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")
    return runs[0] if runs else None
