"""Optuna storages from a URL, and keeping a study whole when workers die.

- `sqlite:///runs/optuna.db` (default): one process; heartbeats on.
- `journal:///runs/optuna.journal` (or a path ending in .journal): several processes on
  one machine (append-only file with a lock; SQLite locks up under parallel writers).
- `postgresql://...` / `mysql://...`: many machines; heartbeats fail a dead worker's
  trial after `grace_period` and a copy is queued again (RetryHeartbeatStaleTrialCallback).

The journal backend has no heartbeats, so every worker also fails and re-queues RUNNING
trials of processes on its own host that no longer exist.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import os
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from lightning_prune.config import ConfigError

try:  # Optuna >= 4.x name; older releases only have RetryFailedTrialCallback
    from optuna.storages import RetryHeartbeatStaleTrialCallback as RetryCallback
except ImportError:  # pragma: no cover
    from optuna.storages import RetryFailedTrialCallback as RetryCallback

DEFAULT_STORAGE = "sqlite:///runs/optuna.db"
RDB_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql")
CARRIED_ATTRS = ("params_text",)  # user attrs a retried copy keeps; the rest is per attempt


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """An exclusive lock on `path` among this machine's processes (created if missing)."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def quiet_experimental() -> Iterator[None]:
    """Heartbeats and retries are "experimental" in Optuna since 2.x; we rely on them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def _journal_path(url: str) -> Path | None:
    if url.startswith("journal:///"):
        return Path(url.removeprefix("journal:///"))
    if url.startswith("journal://"):
        return Path(url.removeprefix("journal://"))
    if "://" not in url and url.endswith(".journal"):
        return Path(url)
    return None


def kind_of(url: str) -> str:
    """'journal', 'sqlite' or 'rdb' (a database server); ConfigError for anything else."""
    if _journal_path(url) is not None:
        return "journal"
    scheme = url.split(":", 1)[0].split("+", 1)[0]
    if scheme == "sqlite":
        return "sqlite"
    if scheme in RDB_SCHEMES:
        return "rdb"
    raise ConfigError(
        f"search.storage={url!r} is not a storage URL; use sqlite:///runs/optuna.db, "
        "journal:///runs/optuna.journal or postgresql://user:password@host:port/db"
    )


def check_storage(url: str, workers: int) -> None:
    """Fail before any trial when the storage cannot take `workers` parallel writers."""
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"search.workers must be an integer >= 1, got {workers!r}")
    if workers > 1 and kind_of(url) == "sqlite":
        raise ConfigError(
            f"search.workers={workers} needs a storage safe for parallel writers, not SQLite "
            f"({url}); use search.storage=journal:///runs/optuna.journal on one machine or "
            "search.storage=postgresql://... across machines"
        )


def make_storage(
    url: str,
    heartbeat_interval: int | None = 10,
    grace_period: int | None = 30,
    max_retry: int | None = 2,
) -> BaseStorage:
    """Open (creating when needed) the storage at `url`."""
    kind = kind_of(url)
    if kind == "journal":
        path = _journal_path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    engine_kwargs: dict = {"pool_pre_ping": True}
    if kind == "sqlite":
        db = Path(url.removeprefix("sqlite:///"))
        if str(db) not in ("", ":memory:"):
            db.parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 60}}
    heartbeat = heartbeat_interval if heartbeat_interval else None
    with quiet_experimental():
        return RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=heartbeat,
            grace_period=grace_period if heartbeat else None,
            heartbeat_stale_trial_callback=RetryCallback(max_retry=max_retry)
            if heartbeat
            else None,
        )


def worker_id() -> str:
    """`host:pid` of this process, stored on each trial it runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_and_retry(study: optuna.Study, trial: FrozenTrial, reason: str, max_retry: int) -> bool:
    """Mark a RUNNING trial FAIL with `reason` and queue a copy; False if already finished."""
    storage = study._storage
    try:
        storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
        if not storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
            return False
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    failed = copy.deepcopy(storage.get_trial(trial._trial_id))
    failed.user_attrs = {k: v for k, v in failed.user_attrs.items() if k in CARRIED_ATTRS}
    with quiet_experimental():
        RetryCallback(max_retry=max_retry)(study, failed)
    return True


def reap_dead_local_trials(study: optuna.Study, max_retry: int) -> int:
    """Fail and re-queue RUNNING trials whose worker process on this host has died."""
    host = socket.gethostname()
    reaped = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = str(trial.user_attrs.get("worker", ""))
        owner_host, _, pid = owner.rpartition(":")
        if owner_host == host and pid.isdigit() and not _alive(int(pid)):
            reason = f"worker {owner} died while running the trial"
            reaped += fail_and_retry(study, trial, reason, max_retry)
    return reaped


def fail_stale(study: optuna.Study, max_retry: int) -> None:
    """Heartbeat check (RDB storages); storages without heartbeats (journal) get the local
    dead-process check instead."""
    from optuna.storages._heartbeat import is_heartbeat_enabled

    if is_heartbeat_enabled(study._storage):
        with quiet_experimental():
            optuna.storages.fail_stale_trials(study)
    else:
        reap_dead_local_trials(study, max_retry)


def retried_numbers(trials: list[FrozenTrial]) -> set[int]:
    """Numbers of FAIL trials that were queued again (their retry stands in for them)."""
    numbers: set[int] = set()
    for trial in trials:
        numbers.update(trial.system_attrs.get("retry_history", []))
    return numbers


def counted_trials(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """Trials that use up `n_trials`: finished, pruned, running, queued, and failed ones
    that were not retried or interrupted (those are re-run, so they do not count)."""
    retried = retried_numbers(trials)
    counted = []
    for trial in trials:
        if trial.state == TrialState.FAIL and (
            trial.number in retried or trial.user_attrs.get("interrupted")
        ):
            continue
        counted.append(trial)
    return counted
