"""Trial pruners; the default compares a trial only with trials that were at least as sparse.

A plain median rule compares every trial at the same step: a trial heading for 99 % sparsity
is then judged mid-ramp, while it is more pruned than the others, and is stopped although it
would recover. `SparsityMatchedPruner` removes that handicap: at validation k it compares the
trial's best value so far (as Optuna's MedianPruner does) with the values at validation k of
the completed trials that were at least as sparse then. A trial is stopped only when it is
worse than the median of trials pruned at least as hard at the same point of training.
"""

from __future__ import annotations

import math
import statistics

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

PRUNERS = ("matched", "median", "halving", "hyperband", "none")


def sparsity_at(trial: FrozenTrial, step: int) -> float:
    """The trial's sparsity at its validation `step` (from the live `curve` user attribute)."""
    curve = trial.user_attrs.get("curve") or []
    if step < len(curve):
        value = curve[step].get("sparsity")
        return 0.0 if value is None else float(value)
    return 0.0


class SparsityMatchedPruner(optuna.pruners.BasePruner):
    """Median rule among completed trials that were at least as sparse at the same validation.

    Args:
        n_startup_trials: completed trials needed before anything is pruned.
        n_warmup_steps: validations a trial reports before it can be pruned.
        n_min_trials: matched trials needed at a step to judge it.
        slack: sparsity a matched trial may lack, e.g. 0.005 (rounding of masks).
    """

    def __init__(
        self,
        n_startup_trials: int = 4,
        n_warmup_steps: int = 0,
        n_min_trials: int = 3,
        slack: float = 0.005,
    ) -> None:
        self.n_startup_trials, self.n_warmup_steps = n_startup_trials, n_warmup_steps
        self.n_min_trials, self.slack = n_min_trials, slack

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step < self.n_warmup_steps:
            return False
        if not math.isfinite(trial.intermediate_values[step]):
            return True
        reported = [v for v in trial.intermediate_values.values() if math.isfinite(v)]
        maximize = study.direction == StudyDirection.MAXIMIZE
        best = max(reported) if maximize else min(reported)  # as Optuna's MedianPruner
        completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if len(completed) < self.n_startup_trials:
            return False
        own = sparsity_at(trial, step)
        matched = [
            t.intermediate_values[step]
            for t in completed
            if step in t.intermediate_values
            and math.isfinite(t.intermediate_values[step])
            and sparsity_at(t, step) >= own - self.slack
        ]
        if len(matched) < self.n_min_trials:
            return False
        median = statistics.median(matched)
        return best < median if maximize else best > median


def build_pruner(kind: str, n_startup_trials: int, n_warmup_steps: int):
    """The pruner named by `search.pruner.kind` (steps are validations)."""
    if kind == "matched":
        return SparsityMatchedPruner(n_startup_trials, n_warmup_steps)
    if kind == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=n_startup_trials, n_warmup_steps=n_warmup_steps
        )
    if kind == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner()
    if kind == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"search.pruner.kind must be one of {list(PRUNERS)}, got {kind!r}")
