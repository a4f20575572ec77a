"""The only use of Optuna's private API, each where no public one exists (Optuna 5).

- `heartbeat`: Optuna beats only for trials run inside `study.optimize`. Our workers run trials
  through ask/tell, so they start Optuna's own heartbeat thread; without it a database storage
  would fail every running trial as stale after `grace_period`.
- `set_running_trial_attr`: a user attribute on a RUNNING trial of another (dead) process,
  which has no `optuna.Trial` object here; `study.tell` can end such a trial, but not label it.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import optuna
from optuna.storages._heartbeat import get_heartbeat_thread
from optuna.trial import FrozenTrial


def heartbeat(study: optuna.Study, trial: optuna.Trial) -> AbstractContextManager:
    """`with heartbeat(study, trial):` beats while the trial runs (a no-op without heartbeats)."""
    return get_heartbeat_thread(trial._trial_id, study._storage)


def set_running_trial_attr(study: optuna.Study, trial: FrozenTrial, key: str, value) -> None:
    """Set a user attribute of a RUNNING trial; raises UpdateFinishedTrialError once finished."""
    study._storage.set_trial_user_attr(trial._trial_id, key, value)
