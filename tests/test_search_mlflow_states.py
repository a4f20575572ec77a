"""MLflow run states follow Optuna trial states: a killed worker's run ends FAILED with its
reason, a rerun repairs what older crashes left RUNNING, searches started together share one
parent run, and the report finds the best model on the tracking server when it is not local.

Real MLflow SQLite stores and real Optuna storages throughout; no process is mocked.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from lightning_prune.search import checkpoint_path, checkpoint_roots, load_study, runs
from lightning_prune.search.contract import TrialAttr
from lightning_prune.search.retries import fail_stale, worker_id
from lightning_prune.search.study_factory import open_search_study
from lightning_prune.search.study_lock import study_lock
from mlflow import MlflowClient
from mlflow.entities import ViewType
from optuna.trial import TrialState

from lightning_prune import tracking
from lightning_prune.cli import main
from lightning_prune.config import load_config
from lightning_prune.report import run_report
from tests.search_helpers import (
    StudyWatcher,
    cli,
    tiny,
    wait_for,
)


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """An empty MLflow SQLite store, migrated once: creating one takes seconds, a copy none."""
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def store(tmp_path, empty_store) -> str:
    """`tracking.uri` of `tiny(tmp_path)`, holding a fresh copy of the empty store."""
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path}/mlflow.db"


def _all_runs(uri: str) -> list:
    """Every run of every experiment in the store, deleted ones included."""
    client = MlflowClient(uri)
    ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    return client.search_runs(ids, run_view_type=ViewType.ALL, max_results=1000)


def _running(uri: str) -> list[str]:
    return [f"{r.info.run_name} ({r.info.lifecycle_stage})" for r in _all_runs(uri)
            if r.info.status == "RUNNING"]  # fmt: skip


def _parents(uri: str) -> list:
    return [r for r in _all_runs(uri) if r.data.tags.get("job") == "search"]


def _leftover_run(cfg, parent: str | None, **tags: str) -> str:
    """A run as an older version or a killed process left it: created, never ended, and not
    promised to this process's exit hook."""
    name = f"trial-{tags['trial_number']}" if "trial_number" in tags else "study-dup"
    run_tags = {"study": cfg.search.study_name, **tags}
    return tracking.start_run(cfg.tracking.uri, cfg.tracking.experiment, name, parent, run_tags)


# --- a worker killed mid-trial, then the study resumed ------------------------------------


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, empty_store):
    """A search SIGKILLed during its first trial, then resumed to the end by the same command."""
    tmp = tmp_path_factory.mktemp("killed")
    shutil.copy(empty_store, tmp / "mlflow.db")
    args = tiny(tmp, "search.study_name=kill", "search.n_trials=2", "search.max_trials=2",
                "search.pruner.kind=none",
                "search.dense_reference=false", "search.heartbeat_interval=1",
                "search.grace_period=2")  # fmt: skip
    storage, uri = f"sqlite:///{tmp}/optuna.db", f"sqlite:///{tmp}/mlflow.db"
    proc = cli("search", *args, "trainer.max_epochs=500", cwd=tmp)
    try:
        victim = wait_for(StudyWatcher(storage, "kill").running, 120, what="a running trial")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    run_id = victim.user_attrs[TrialAttr.MLFLOW_RUN_ID]
    status_after_kill = MlflowClient(uri).get_run(run_id).info.status
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp)
        code = main(["search", *args])
    return {"tmp": tmp, "args": args, "storage": storage, "uri": uri, "victim": victim.number,
            "run_id": run_id, "status_after_kill": status_after_kill, "code": code}  # fmt: skip


def test_a_killed_trials_run_ends_failed_with_a_reason_and_nothing_stays_running(resumed):
    assert resumed["status_after_kill"] == "RUNNING"  # what SIGKILL leaves behind
    assert resumed["code"] == 0
    study = load_study(resumed["storage"], "kill")
    assert study.trials[resumed["victim"]].state == TrialState.FAIL
    run = MlflowClient(resumed["uri"]).get_run(resumed["run_id"])
    assert run.info.status == "FAILED"
    assert run.data.tags["trial_state"] == "FAIL"
    assert "no heartbeat for 2s" in run.data.tags["fail_reason"]
    assert run.data.tags["ended_by"] != "exit"  # the resuming worker ended it, not a hook
    assert _running(resumed["uri"]) == []
    assert [p.info.status for p in _parents(resumed["uri"])] == ["FINISHED"]
    finished = study.get_trials(states=(TrialState.COMPLETE,))
    states = {MlflowClient(resumed["uri"]).get_run(t.user_attrs["mlflow_run_id"]).data.tags[
        "trial_state"] for t in finished}  # fmt: skip
    assert len(finished) == 2 and states == {"COMPLETE"}


def test_report_reads_the_best_model_from_mlflow_when_the_local_file_is_gone(resumed, capsys):
    cfg = load_config(resumed["args"])
    study = load_study(resumed["storage"], "kill")
    best = study.best_trial
    local = checkpoint_path(best, checkpoint_roots(study))
    local.rename(local.with_suffix(".moved"))  # the best trial ran "on another machine"
    report = run_report(cfg)
    assert "layer_sparsity" in report.figures and report.figures["layer_sparsity"].is_file()
    assert any("read from MLflow run" in note for note in report.notes)

    # Neither the local file nor the artifact: the report says so instead of a silent gap.
    run_id = best.user_attrs["mlflow_run_id"]
    artifacts = [p for p in (resumed["tmp"] / "artifacts").rglob("model.pt") if run_id in str(p)]
    assert len(artifacts) == 1
    artifacts[0].unlink()
    capsys.readouterr()
    report = run_report(cfg)
    assert "layer_sparsity" not in report.figures
    assert "No per-layer sparsity figure" in report.markdown.read_text()
    assert f"trial {best.number}: checkpoint not found" in capsys.readouterr().err


# --- repairs by whoever notices -----------------------------------------------------------


def test_a_rerun_ends_the_leftover_runs_of_finished_trials(tmp_path, store, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = tiny(tmp_path, "search.study_name=rep", "search.n_trials=3",
                "search.dense_reference=false")  # fmt: skip
    cfg = load_config(args)
    study = open_search_study(cfg)
    parent = runs.start_parent(cfg, study)
    tracking.ended(parent)  # as if the command had been killed: the parent stays RUNNING
    # What older versions left: finished trials whose runs are RUNNING, one run never linked
    # to its trial (killed in between), and the deleted-but-RUNNING loser of a parent race.
    leftovers = {}
    for state in (TrialState.FAIL, TrialState.COMPLETE, TrialState.FAIL):
        trial = study.ask()
        run_id = _leftover_run(cfg, parent, job="search-trial", trial_number=str(trial.number))
        if trial.number < 2:
            trial.set_user_attr(TrialAttr.MLFLOW_RUN_ID, run_id)
        study.tell(trial, 0.5 if state == TrialState.COMPLETE else None, state=state)
        leftovers[trial.number] = run_id
    duplicate = _leftover_run(cfg, None, job="search")
    MlflowClient(cfg.tracking.uri).delete_run(duplicate)
    assert len(_running(cfg.tracking.uri)) == 5

    assert main(["search", *args]) == 0  # the study is full: the command only repairs

    client = MlflowClient(cfg.tracking.uri)
    got = {n: client.get_run(r) for n, r in leftovers.items()}
    assert {n: (r.info.status, r.data.tags["trial_state"]) for n, r in got.items()} == {
        0: ("FAILED", "FAIL"), 1: ("FINISHED", "COMPLETE"), 2: ("FAILED", "FAIL")}  # fmt: skip
    assert "no recorded reason" in got[0].data.tags["fail_reason"]
    assert got[0].data.tags["ended_by"] == worker_id()
    dup = client.get_run(duplicate)
    assert (dup.info.status, dup.info.lifecycle_stage) == ("KILLED", "deleted")
    assert _running(cfg.tracking.uri) == []


def _dead_workers_trial(tmp_path, name: str):
    """A RUNNING trial whose worker on this host has exited, with its linked MLflow run."""
    cfg = load_config(tiny(tmp_path, f"search.storage=journal:///{tmp_path}/optuna.journal",
                           f"search.study_name={name}"))  # fmt: skip
    study = open_search_study(cfg)
    parent = runs.start_parent(cfg, study)
    gone = subprocess.Popen(["true"])
    gone.wait()
    trial = study.ask()
    trial.set_user_attr(TrialAttr.WORKER, f"{socket.gethostname()}:{gone.pid}")
    run_id = _leftover_run(cfg, parent, job="search-trial", trial_number=str(trial.number))
    trial.set_user_attr(TrialAttr.MLFLOW_RUN_ID, run_id)
    return cfg, study, parent, run_id, gone


def test_the_worker_that_reaps_a_dead_workers_trial_ends_its_run(tmp_path, store):
    cfg, study, parent, run_id, gone = _dead_workers_trial(tmp_path, "reap")

    assert fail_stale(study, cfg.search) == 1

    run = MlflowClient(cfg.tracking.uri).get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags["trial_state"] == "FAIL"
    assert f"worker {socket.gethostname()}:{gone.pid} died" in run.data.tags["fail_reason"]
    runs.finish_parent(cfg, study, parent, interrupted=False)
    assert _running(cfg.tracking.uri) == []


def test_a_run_ended_complete_by_a_worker_killed_before_optuna_heard_is_corrected(tmp_path, store):
    """Killed between ending its MLflow run and Optuna's `tell`: the run says FINISHED and
    COMPLETE, Optuna fails the trial; the reaper brings the run into the trial's state."""
    cfg, study, parent, run_id, _ = _dead_workers_trial(tmp_path, "late")
    tracking.end_run(cfg.tracking.uri, run_id, "FINISHED", {"trial_state": "COMPLETE"})

    assert fail_stale(study, cfg.search) == 1

    run = MlflowClient(cfg.tracking.uri).get_run(run_id)
    assert (run.info.status, run.data.tags["trial_state"]) == ("FAILED", "FAIL")
    assert "died" in run.data.tags["fail_reason"]
    runs.finish_parent(cfg, study, parent, interrupted=False)


# --- one parent run whatever the race -----------------------------------------------------

STARTER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from lightning_prune import tracking
    from lightning_prune.config import load_config
    from lightning_prune.search import runs
    from lightning_prune.search.study_factory import open_search_study

    gate, me, count, fail, *overrides = sys.argv[1:]
    cfg = load_config(overrides)
    study = open_search_study(cfg)
    tracking.ensure_experiment(cfg.tracking.uri, cfg.tracking.experiment)  # warm: a tight race
    Path(gate, me).touch()
    while len(list(Path(gate).iterdir())) < int(count):  # all start_parent calls at once
        time.sleep(0.005)
    parent = runs.start_parent(cfg, study)
    print("PARENT", parent, flush=True)
    if fail == "1":
        raise RuntimeError("an error after the parent run started")
    runs.finish_parent(cfg, study, parent, interrupted=False)
""")


def _starters(tmp: Path, args: list[str], count: int, fail: bool) -> list[subprocess.Popen]:
    gate = tmp / "gate"
    gate.mkdir()
    command = [sys.executable, "-c", STARTER, str(gate)]
    return [
        subprocess.Popen([*command, str(i), str(count), "1" if fail else "0", *args],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(count)
    ]  # fmt: skip


def test_searches_started_together_share_one_parent_run_and_end_it(tmp_path, store):
    args = tiny(tmp_path, "search.study_name=race")
    open_search_study(load_config(args))  # the study exists; its parent run does not yet
    procs = _starters(tmp_path, args, 2, fail=False)
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    chosen = {line.split()[1] for out in outs for line in out.splitlines()
              if line.startswith("PARENT")}  # fmt: skip

    parents = _parents(store)
    assert len(chosen) == 1 and [p.info.run_id for p in parents] == list(chosen)
    assert len(_all_runs(store)) == 1  # no loser was even created, deleted or not
    assert parents[0].info.status == "FINISHED"


def test_a_search_that_fails_after_starting_its_runs_leaves_none_running(tmp_path, store):
    args = tiny(tmp_path, "search.study_name=err")
    (proc,) = _starters(tmp_path, args, 1, fail=True)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 1 and "an error after the parent run started" in out

    (parent,) = _parents(store)
    assert parent.info.status == "FAILED"
    assert parent.data.tags["ended_by"] == "exit" and "exited" in parent.data.tags["fail_reason"]
    assert _running(store) == []


def test_machines_serialise_on_a_server_held_study_lock(postgres_url):
    """Across machines the lock is PostgreSQL's advisory lock: held per study, waited for."""
    held, order = threading.Event(), []

    def first():
        with study_lock(postgres_url, "pg"):
            held.set()
            time.sleep(1.0)
            order.append("first released")

    thread = threading.Thread(target=first)
    thread.start()
    held.wait(30)
    with study_lock(postgres_url, "other"):  # another study does not wait
        order.append("other study")
    with study_lock(postgres_url, "pg"):
        order.append("second acquired")
    thread.join()
    assert order == ["other study", "first released", "second acquired"]
