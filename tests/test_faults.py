"""Fault injection: SIGKILL one worker of a running search, or the whole search (its process
group), mid-trial on each storage, then let it finish or resume it with the same command.

After each: no trial finished before the kill is lost or changed, no two finished trials ran
the same recipe, every killed trial ended FAIL and was retried with its parameters, the study
holds `n_trials` finished trials, and every trial's MLflow run ends in its trial's state with
none left RUNNING.

A SQLite study has one worker (search.workers>1 is refused), so killing "one worker" of it is
killing the whole search: SQLite runs the second scenario only. The resume is the CLI's
`main` with the same arguments, in this process (it saves the imports of a new one).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from lightning_prune.search import load_study, runs, space
from lightning_prune.search.contract import TrialAttr, curve_of, quiet_experimental
from lightning_prune.search.study_factory import open_search_study
from mlflow import MlflowClient
from mlflow.entities import ViewType
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from lightning_prune import tracking
from lightning_prune.cli import main
from lightning_prune.config import load_config
from tests.search_helpers import (
    StudyWatcher,
    cli,
    kill_group,
    serve_postgres,
    tiny,
    wait_for,
)

pytestmark = pytest.mark.faults

N_TRIALS = 4
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
STATUS_OF = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """An empty MLflow SQLite store, migrated once (seconds); each test gets a copy."""
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture(scope="module")
def pg_server():
    """One throwaway PostgreSQL server for the module; each test uses its own study."""
    yield from serve_postgres()


@pytest.fixture
def setup(request, tmp_path, empty_store, monkeypatch):
    """(storage URL, args of the search command) for the test's storage kind."""
    kind = request.param
    monkeypatch.chdir(tmp_path)
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    storage = {
        "sqlite": f"sqlite:///{tmp_path}/optuna.db",
        "journal": f"journal:///{tmp_path}/optuna.journal",
    }.get(kind) or request.getfixturevalue("pg_server")
    name = f"killed-{request.node.originalname.split('_')[3]}-{kind}"  # worker | search
    args = tiny(
        tmp_path,
        f"search.storage={storage}",
        f"search.study_name={name}",
        f"search.n_trials={N_TRIALS}",
        f"search.max_trials={N_TRIALS}",  # the rerun finishes the study, not grows it
        f"search.workers={1 if kind == 'sqlite' else 2}",
        "search.heartbeat_interval=1",
        "search.grace_period=2",
        "search.dense_reference=false",
        "data.num_train=4096",  # a few tenths of a second per epoch: room to kill mid-trial
        "trainer.max_epochs=3",
    )
    return storage, name, args


def _fresh_victim(watcher: StudyWatcher):
    """Once a trial is COMPLETE: a RUNNING trial with its MLflow run and at most one of its
    three validations done (the kill lands mid-trial), and the finished trials then."""
    if watcher.running() is None:
        return None
    trials = watcher.study.get_trials()
    if not any(t.state == TrialState.COMPLETE for t in trials):
        return None
    fresh = [t for t in trials if t.state == TrialState.RUNNING and len(curve_of(t)) < 2
             and TrialAttr.MLFLOW_RUN_ID in t.user_attrs]  # fmt: skip
    finished = {t.number: t for t in trials if t.state in FINISHED}
    return (fresh[0], finished) if fresh else None


def _wait_victim(proc, storage: str, name: str):
    """`_fresh_victim` of the search `proc` runs; fails at once, with its output, if it exits."""
    watcher = StudyWatcher(storage, name)

    def victim():
        if proc.poll() is not None:
            raise AssertionError(f"search exited {proc.returncode}:\n{proc.stdout.read()}")
        return _fresh_victim(watcher)

    return wait_for(victim, 240, interval=0.1, what="a trial to kill")


def _all_runs(uri: str) -> list:
    client = MlflowClient(uri)
    ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    return client.search_runs(ids, run_view_type=ViewType.ALL, max_results=1000)


def _check_whole(storage: str, name: str, uri: str, before: dict, killed: list[FrozenTrial]):
    study = load_study(storage, name)
    trials = study.get_trials()
    by_number = {t.number: t for t in trials}
    states = Counter(t.state.name for t in trials)
    table = [(t.number, t.state.name, t.user_attrs.get(TrialAttr.FAIL_REASON), t.user_attrs.get(
        TrialAttr.INVOCATION), t.system_attrs.get("failed_trial")) for t in trials]  # fmt: skip
    assert states["RUNNING"] == states["WAITING"] == 0, (states, table)
    finished = [t for t in trials if t.state in FINISHED]
    assert len(finished) == N_TRIALS, states

    # (1) No finished trial lost: each is still finished, with the same values.
    after = {n: (by_number[n].state, by_number[n].values) for n in before}
    assert after == {n: (t.state, t.values) for n, t in before.items()}

    # (2) No recipe ran twice.
    recipes = Counter(tuple(sorted(t.params.items())) for t in finished)
    repeats = {r: [t.number for t in finished if tuple(sorted(t.params.items())) == r]
               for r, count in recipes.items() if count > 1}  # fmt: skip
    assert repeats == {}, f"finished trials with identical params: {list(repeats.values())}"

    # (3) Each killed trial is FAIL and was retried, later, with its parameters, to the end.
    trained = [t.number for t in killed if TrialAttr.MLFLOW_RUN_ID in t.user_attrs]
    for number in (t.number for t in killed):
        victim = by_number[number]
        assert victim.state == TrialState.FAIL, (number, victim.state)
        with quiet_experimental():
            retries = [t for t in trials
                       if number in RetryHeartbeatStaleTrialCallback.retry_history(t)]  # fmt: skip
        assert retries, f"killed trial {number} was not retried"
        for retry in retries:  # a trial killed while sampling had part of its recipe
            assert retry.number > number and victim.params.items() <= retry.params.items(), (
                number, victim.params, retry.number, retry.params)  # fmt: skip
        if number in trained:  # a trial killed in training had all of it
            assert all(t.params == victim.params for t in retries), number
        assert any(t.state in FINISHED for t in retries), [(t.number, t.state) for t in retries]

    # (4) MLflow: nothing RUNNING; each trial's run ends in its Optuna state.
    runs = _all_runs(uri)
    assert [(r.info.run_name, r.data.tags.get("job")) for r in runs
            if r.info.status == "RUNNING"] == []  # fmt: skip
    trial_runs = {r.info.run_id: r for r in runs if r.data.tags.get("job") == "search-trial"}
    seen = {}  # run id -> (trial number, run status, trial_state tag, Optuna state)
    for run_id, run in trial_runs.items():
        number = int(run.data.tags["trial_number"])
        tags, state = run.data.tags, by_number[number].state.name
        seen[run_id] = (number, run.info.status, tags.get("trial_state"), state)
        assert run.info.status != "FAILED" or tags.get("fail_reason"), seen[run_id]
    wrong = [v for v in seen.values() if v[1:3] != (STATUS_OF[v[3]], v[3])]
    assert wrong == [], "MLflow runs not in their trials' states"
    for trial in finished:  # each finished trial has its own run
        assert seen[trial.user_attrs[TrialAttr.MLFLOW_RUN_ID]][0] == trial.number
    for number in trained:  # and the killed trials' runs are there, FAILED
        assert (number, "FAILED", "FAIL", "FAIL") in seen.values(), number


@pytest.mark.parametrize("setup", ["journal", "postgresql"], indirect=True)
def test_a_killed_worker_is_retried_and_the_search_finishes(setup, tmp_path):
    storage, name, args = setup
    proc = cli("search", *args, cwd=tmp_path)
    try:
        victim, before = _wait_victim(proc, storage, name)
        pid = int(victim.user_attrs[TrialAttr.WORKER].rsplit(":", 1)[1])
        assert pid != proc.pid  # a worker process, not the supervisor
        os.kill(pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            kill_group(proc)
    assert proc.returncode == 0, out
    _check_whole(storage, name, f"sqlite:///{tmp_path}/mlflow.db", before, [victim])


@pytest.mark.parametrize("setup", ["sqlite", "journal", "postgresql"], indirect=True)
def test_a_killed_search_resumes_without_loss_or_repeats(setup, tmp_path):
    storage, name, args = setup
    proc = cli("search", *args, cwd=tmp_path)
    try:
        victim, before = _wait_victim(proc, storage, name)
    finally:
        kill_group(proc)  # the main process and its workers, at once
    killed: list[FrozenTrial] = load_study(storage, name).get_trials(states=(TrialState.RUNNING,))
    assert victim.number in [t.number for t in killed]
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run = MlflowClient(uri).get_run(victim.user_attrs[TrialAttr.MLFLOW_RUN_ID])
    assert run.info.status == "RUNNING"  # what SIGKILL leaves behind

    assert main(["search", *args]) == 0  # the same command again resumes the study

    _check_whole(storage, name, uri, before, killed)


@pytest.mark.parametrize("setup", ["journal"], indirect=True)
def test_a_run_created_just_before_the_kill_is_ended_by_the_resume(setup, tmp_path):
    """What a SIGKILL between `TrialRun(...)` (the MLflow run exists) and recording its id on
    the trial (objective.run_trial) leaves, made without the race: the resume must end that
    run too. A killed search with two workers lands there now and then."""
    storage, name, args = setup
    args = [*args, "search.workers=1"]  # the same reaping, without starting worker processes
    cfg = load_config(args)
    study = open_search_study(cfg)
    parent = runs.start_parent(cfg, study)
    tracking.ended(parent)  # as if the command had been killed
    gone = subprocess.Popen(["true"])
    gone.wait()
    trial = study.ask()
    trial.set_user_attr(TrialAttr.WORKER, f"{socket.gethostname()}:{gone.pid}")
    space.suggest(trial, space.parse_space(cfg))
    tracking.ended(runs.TrialRun(cfg, parent, trial).run_id)  # its process "died": no hook
    killed = study.get_trials(states=(TrialState.RUNNING,))

    assert main(["search", *args]) == 0

    _check_whole(storage, name, cfg.tracking.uri, {}, killed)
