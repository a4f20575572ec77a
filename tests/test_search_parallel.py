"""Several workers on one study: local processes on a journal file, and machines joined
through PostgreSQL; a worker killed mid-trial loses nothing."""

from __future__ import annotations

import os
import signal
import threading

from lightning_prune.search import load_study, run_search
from mlflow import MlflowClient
from optuna.trial import TrialState

from lightning_prune.config import load_config
from tests.search_helpers import (
    StudyWatcher,
    cli,
    tiny,
    wait_for,
)


def _check_whole(study, n_trials: int, killed_number: int, uri: str) -> None:
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) == n_trials
    killed = study.trials[killed_number]
    assert killed.state == TrialState.FAIL
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed_number]
    assert len(retries) == 1 and retries[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert retries[0].params == killed.params
    # No trial ran twice: every finished trial has its own MLflow run and number.
    run_ids = [t.user_attrs["mlflow_run_id"] for t in finished]
    assert len(set(run_ids)) == n_trials
    client = MlflowClient(uri)
    runs = [client.get_run(r) for r in run_ids]
    assert {r.data.tags.get("trial_state") for r in runs} <= {"COMPLETE", "PRUNED"}
    parent = study.user_attrs["mlflow_parent_run_id"]
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent}


def test_local_workers_share_a_journal_and_survive_a_killed_worker(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    storage = f"journal:///{tmp_path}/optuna.journal"
    cfg = load_config(
        tiny(
            tmp_path,
            "search.workers=2",
            f"search.storage={storage}",
            "search.study_name=par",
            "search.n_trials=4",
            "trainer.max_epochs=4",
        )
    )
    result: dict = {}
    thread = threading.Thread(target=lambda: result.setdefault("study", run_search(cfg)))
    thread.start()
    watcher = StudyWatcher(storage, "par")
    victim = wait_for(watcher.running, 180, what="a running trial")
    os.kill(int(victim.user_attrs["worker"].rsplit(":", 1)[1]), signal.SIGKILL)
    thread.join(timeout=300)
    assert not thread.is_alive()
    study = load_study(storage, "par")
    workers = {t.user_attrs["worker"] for t in study.trials}
    assert len(workers) >= 2  # the trials really ran in several processes
    assert "died" in study.trials[victim.number].user_attrs["fail_reason"]
    _check_whole(study, 4, victim.number, f"sqlite:///{tmp_path}/mlflow.db")


def test_machines_join_through_postgres_and_heartbeats_retry_a_killed_worker(
    tmp_path, postgres_url
):
    args = tiny(
        tmp_path,
        f"search.storage={postgres_url}",
        "search.study_name=pg",
        "search.n_trials=4",
        "search.max_trials=4",  # two machines fill one study of 4
        "search.heartbeat_interval=1",
        "search.grace_period=3",
        "trainer.max_epochs=10",
    )
    # Two "machines" started together join one study through the server.
    first = cli("search", *args, cwd=tmp_path)
    second = cli("search", *args, cwd=tmp_path)
    try:
        watcher = StudyWatcher(postgres_url, "pg")
        victim = wait_for(
            lambda: watcher.running(second.pid),
            120,
            interval=0.5,
            what="a trial of the second worker",
        )
        os.killpg(second.pid, signal.SIGKILL)
        out, _ = first.communicate(timeout=300)
        assert first.returncode == 0, out
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    study = load_study(postgres_url, "pg")
    assert "failed_trial" not in study.trials[victim.number].system_attrs
    _check_whole(study, 4, victim.number, f"sqlite:///{tmp_path}/mlflow.db")
