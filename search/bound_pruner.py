"""A trial pruner that stops only trials that cannot win: a learning-curve bound.

A median rule stops a trial for being below its peers *now*; under pruning, curves cross (a
recipe that prunes early dips early and recovers), so the eventual best trial is often below
the median mid-ramp and gets stopped. This rule asks the question the search cares about
instead: could this trial still beat the best feasible trial so far? It learns how much a
curve can still rise from the completed trials themselves.
"""

from __future__ import annotations

import math

import optuna
from lightning_prune.search.contract import is_feasible
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState


def _values(trial: FrozenTrial) -> list[float]:
    """Reported values in step order."""
    return [trial.intermediate_values[s] for s in sorted(trial.intermediate_values)]


def _best_until(values: list[float], step_index: int) -> float:
    finite = [v for v in values[: step_index + 1] if math.isfinite(v)]
    return max(finite) if finite else -math.inf


class CannotWinPruner(optuna.pruners.BasePruner):
    """Stop a trial when even the largest late gain seen cannot lift it past the best.

    At a trial's k-th reported validation, with `best_k` its best value so far, the rule
    takes every completed trial that reported at least k + 1 validations and measures its
    late gain: its final value minus its best value over its first k + 1 validations. The
    trial is stopped when `best_k + max(late gain) + margin` is still below the best final
    value of the completed *feasible* trials (all completed ones while none is feasible).

    `n_startup_trials` completed trials are needed before anything is stopped; a non-finite
    value stops a trial at once (its weights diverged). Maximised objectives only (the
    search maximises val_acc); for a minimised one it never stops a trial.

    Args:
        n_startup_trials: completed trials needed before anything is stopped (>= 0).
        n_warmup_steps: validations a trial reports before it can be stopped (>= 0).
        margin: extra gain allowed on top of the largest one seen, in metric units.
    """

    def __init__(
        self, n_startup_trials: int = 4, n_warmup_steps: int = 0, margin: float = 0.0
    ) -> None:
        if n_startup_trials < 0:
            raise ValueError(f"n_startup_trials must be >= 0, got {n_startup_trials!r}")
        if n_warmup_steps < 0:
            raise ValueError(f"n_warmup_steps must be >= 0, got {n_warmup_steps!r}")
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin!r}")
        self.n_startup_trials, self.n_warmup_steps, self.margin = (
            n_startup_trials,
            n_warmup_steps,
            margin,
        )

    def bound(self, study: optuna.Study, trial: FrozenTrial) -> tuple[float, float] | None:
        """(the trial's optimistic final value, the value to beat), or None when no judgement
        can be made yet."""
        values = _values(trial)
        k = len(values) - 1
        completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if len(completed) < max(1, self.n_startup_trials):
            return None
        feasible = [t for t in completed if is_feasible(t)] or completed
        to_beat = max(t.value for t in feasible if t.value is not None and math.isfinite(t.value))
        gains = [
            t.value - _best_until(_values(t), k)
            for t in completed
            if len(t.intermediate_values) > k and t.value is not None and math.isfinite(t.value)
        ]
        if not gains:
            return None
        return _best_until(values, k) + max(0.0, max(gains)) + self.margin, to_beat

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step < self.n_warmup_steps:
            return False
        if not math.isfinite(trial.intermediate_values[step]):
            return True
        if study.direction != StudyDirection.MAXIMIZE:
            return False
        judged = self.bound(study, trial)
        return judged is not None and judged[0] < judged[1]
