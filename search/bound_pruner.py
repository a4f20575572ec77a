"""A trial pruner that stops only trials that cannot win: a learning-curve bound.

A median rule stops a trial for being below its peers *now*; under pruning, curves cross (a
recipe that prunes early dips early and recovers), so the eventual best trial is often below
the median mid-ramp and gets stopped. This rule asks the question the search cares about
instead: could this trial still beat the best feasible trial so far? It learns how much a
curve can still rise from the completed trials themselves.
"""

from __future__ import annotations

import math
import statistics
from itertools import pairwise

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


def metric_noise(completed: list[FrozenTrial]) -> float:
    """How much the metric moves between validations once a curve has settled: the median,
    over completed trials, of the median step-to-step change over the last half of each
    curve (where the ramp is over and the learning rate small). Measured, not assumed, so
    a small validation set (noisier) widens the margin by itself."""
    per_trial = []
    for trial in completed:
        tail = [
            v for v in _values(trial)[len(trial.intermediate_values) // 2 :] if math.isfinite(v)
        ]
        if len(tail) >= 2:
            per_trial.append(statistics.median(abs(a - b) for a, b in pairwise(tail)))
    return statistics.median(per_trial) if per_trial else 0.0


class CannotWinPruner(optuna.pruners.BasePruner):
    """Stop a trial when even the largest late gain seen cannot lift it past the best.

    At a trial's k-th reported validation, with `best_k` its best value so far, the rule
    takes every completed trial that reported at least k + 1 validations and measures its
    late gain: its final value minus its best value over its first k + 1 validations. The
    trial is stopped when `best_k + max(late gain) + margin` is still below the best final
    value of the completed *feasible* trials (all completed ones while none is feasible).
    The margin is, by default, `noise_factor` times the metric's own noise between
    validations (`metric_noise`): trials within noise of the best are never stopped, since
    which of them ends on top is luck.

    `n_startup_trials` completed trials are needed before anything is stopped; a non-finite
    value stops a trial at once (its weights diverged). Maximised objectives only (the
    search maximises val_acc); for a minimised one it never stops a trial.

    Args:
        n_startup_trials: completed trials needed before anything is stopped (>= 0).
        n_warmup_steps: validations a trial reports before it can be stopped (>= 0).
        margin: extra gain allowed on top of the largest one seen, in metric units; None:
            `noise_factor` x the measured noise of the metric.
        noise_factor: how many noise widths the automatic margin spans (>= 0).
    """

    def __init__(
        self,
        n_startup_trials: int = 4,
        n_warmup_steps: int = 0,
        margin: float | None = None,
        noise_factor: float = 2.0,
    ) -> None:
        if n_startup_trials < 0:
            raise ValueError(f"n_startup_trials must be >= 0, got {n_startup_trials!r}")
        if n_warmup_steps < 0:
            raise ValueError(f"n_warmup_steps must be >= 0, got {n_warmup_steps!r}")
        if margin is not None and margin < 0:
            raise ValueError(f"margin must be >= 0 or None (measured), got {margin!r}")
        if noise_factor < 0:
            raise ValueError(f"noise_factor must be >= 0, got {noise_factor!r}")
        self.n_startup_trials, self.n_warmup_steps = n_startup_trials, n_warmup_steps
        self.margin, self.noise_factor = margin, noise_factor

    def bound(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, float] | None:
        """The numbers behind a judgement (`best`, `gain`, `margin`, `optimistic`, `to_beat`,
        `step`), or None when none can be made yet."""
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
        margin = self.margin
        if margin is None:
            margin = self.noise_factor * metric_noise(completed)
        best, gain = _best_until(values, k), max(0.0, max(gains))
        return {"best": best, "gain": gain, "margin": margin, "optimistic": best + gain + margin,
                "to_beat": to_beat, "step": k}  # fmt: skip

    def explain(self, study: optuna.Study, trial: FrozenTrial) -> str:
        """Why the trial was stopped, with the numbers (for its user attrs and MLflow)."""
        if trial.last_step is not None and not math.isfinite(
            trial.intermediate_values[trial.last_step]
        ):
            return f"non-finite value at validation {trial.last_step}: the weights diverged"
        b = self.bound(study, trial)
        if b is None:
            return ""
        return (
            f"cannot win: best so far {b['best']:.4f} + largest late gain seen "
            f"{b['gain']:.4f} + noise margin {b['margin']:.4f} = {b['optimistic']:.4f} < "
            f"{b['to_beat']:.4f} (best feasible trial) at validation {b['step']}"
        )

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step < self.n_warmup_steps:
            return False
        if not math.isfinite(trial.intermediate_values[step]):
            return True
        if study.direction != StudyDirection.MAXIMIZE:
            return False
        judged = self.bound(study, trial)
        return judged is not None and judged["optimistic"] < judged["to_beat"]
