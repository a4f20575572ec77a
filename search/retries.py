"""Keeping a study whole when workers die: their RUNNING trials are failed and queued again.

Database storages with heartbeats do this through Optuna (`fail_stale_trials` after
`grace_period`, then RetryHeartbeatStaleTrialCallback). A journal file has no heartbeats, so
every worker also fails and re-queues the RUNNING trials of processes on its own host that no
longer exist. Either way the MLflow runs of the failed trials are ended FAILED with the
reason by the process that failed them (search/run_states.py).
"""

from __future__ import annotations

import datetime
import os
import socket

import optuna
from lightning_prune.search.contract import TrialAttr, has_heartbeats, quiet_experimental
from lightning_prune.search.optuna_private import set_running_trial_attr
from lightning_prune.search.run_states import end_trial_runs
from omegaconf import DictConfig
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState


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
    try:
        set_running_trial_attr(study, trial, TrialAttr.FAIL_REASON, reason)
        failed = study.tell(trial.number, state=TrialState.FAIL)
    except (UpdateFinishedTrialError, ValueError):  # finished meanwhile, e.g. by another worker
        return False
    failed.user_attrs = {}  # the copy is a new attempt: none of the dead one's results
    with quiet_experimental():
        RetryHeartbeatStaleTrialCallback(max_retry=max_retry)(study, failed)
    return True


def _running(study: optuna.Study, older_than_s: float | None) -> list[FrozenTrial]:
    """RUNNING trials, only those started at least `older_than_s` ago when given."""
    now = datetime.datetime.now()
    return [
        t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if older_than_s is None or t.datetime_start is None
        or (now - t.datetime_start).total_seconds() >= older_than_s
    ]  # fmt: skip


def reap_dead_local_trials(
    study: optuna.Study, max_retry: int, older_than_s: float | None = None
) -> int:
    """Fail and re-queue RUNNING trials whose worker process on this host has died (with
    `older_than_s`, only trials started at least that long ago)."""
    host = socket.gethostname()
    reaped = 0
    for trial in _running(study, older_than_s):
        owner = str(trial.user_attrs.get(TrialAttr.WORKER, ""))
        owner_host, _, pid = owner.rpartition(":")
        if owner_host == host and pid.isdigit() and not _alive(int(pid)):
            reason = f"worker {owner} died while running the trial"
            reaped += fail_and_retry(study, trial, reason, max_retry)
    return reaped


def reap_orphan_trials(study: optuna.Study, max_retry: int, older_than_s: float) -> int:
    """Fail and re-queue RUNNING trials older than `older_than_s` that never recorded a
    worker: killed between Optuna's ask and its first record, so no heartbeat either."""
    orphans = [
        t for t in _running(study, older_than_s)
        if t.datetime_start is not None and not t.user_attrs.get(TrialAttr.WORKER)
    ]  # fmt: skip
    reason = "its worker died before recording itself"
    return sum(fail_and_retry(study, trial, reason, max_retry) for trial in orphans)


def fail_stale(study: optuna.Study, search: DictConfig) -> int:
    """Fail and re-queue dead workers' trials: by heartbeat where `search.storage` beats,
    else by the local dead-process check; then end their MLflow runs. Returns how many."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return 0
    if has_heartbeats(search.storage, search.heartbeat_interval):
        with quiet_experimental():
            optuna.storages.fail_stale_trials(study)
        # a worker killed before its trial's first beat leaves a trial no heartbeat check sees
        reap_dead_local_trials(study, search.max_retry, older_than_s=2 * search.grace_period)
        reason = f"no heartbeat for {search.grace_period}s: its worker died or hung"
    else:
        reap_dead_local_trials(study, search.max_retry)
        reason = "its worker died while running the trial"
    reap_orphan_trials(study, search.max_retry, older_than_s=2 * search.grace_period)
    numbers = {t.number for t in running}
    ended = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    failed = [t for t in ended if t.number in numbers]
    if failed:
        end_trial_runs(study, failed, reason, ended_by=worker_id())
    return len(failed)
