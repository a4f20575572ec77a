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
import re
import statistics

import optuna
from lightning_prune.search.contract import CurvePoint, curve_of
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

PRUNERS = ("matched", "bound", "median", "halving", "hyperband", "none")


def sparsity_at(trial: FrozenTrial, step: int) -> float:
    """The trial's sparsity at its validation `step` (from the live `curve` user attribute)."""
    curve = curve_of(trial)
    if step < len(curve):
        value = curve[step].get(CurvePoint.SPARSITY)
        return 0.0 if value is None else float(value)
    return 0.0


class SparsityMatchedPruner(optuna.pruners.BasePruner):
    """Median rule among completed trials that were at least as sparse at the same validation.

    Otherwise it follows Optuna's MedianPruner (`n_startup_trials`, `n_warmup_steps` and
    `n_min_trials` mean the same; a trial is judged by its best value so far, at its last
    reported step, against the median of the completed trials' values at that step; nothing
    is pruned before a trial has reported, nor while no trial has completed; asking again
    with the same reports gives the same answer). The defaults differ (4 startup trials, 3
    matched trials per judgement) and there is no `interval_steps`: every validation is a
    check; the Trainer spaces validations (`val_check_interval`). It differs on purpose here:

    - Sparsity matching: only completed trials whose sparsity at that validation was at least
      the trial's own minus `slack` are peers, so a trial heading for a high target is not
      stopped for its mid-ramp dip. A trial sparser than every peer is not judged
      (`n_min_trials` is not met); a dense trial (or one without sparsity) is judged against
      every completed trial, as by MedianPruner (non-finite values aside, below).
    - Steps are validation indices and `curve[k]` (the `curve` user attribute written by
      search/reporter.py at each validation) describes step k. Steps need not be reported
      contiguously, but a step without a `curve` entry reads as sparsity 0 (dense): for the
      trial judged, every completed trial is then a peer (the plain median rule); a completed
      trial without an entry is a peer only of trials no sparser than `slack`. Reading
      `curve[step]` (not the entry of the n-th reported value) keeps each value with the
      sparsity of its own validation when some validations go unreported.
    - Non-finite values (NaN, inf): a trial whose latest value is non-finite is pruned as soon
      as `n_warmup_steps` allow, even while no trial has completed and during
      `n_startup_trials` (MedianPruner waits for completed trials, and then prunes only when
      every value reported so far is NaN). A NaN or infinite validation metric means the
      weights diverged; an earlier good value does not bring them back, and no peers are
      needed to tell (Optuna's ThresholdPruner prunes NaN without peers too). Non-finite
      values of completed trials are no evidence: they neither set the median nor count
      towards `n_min_trials` (MedianPruner counts them towards `n_min_trials`).

    Args:
        n_startup_trials: completed trials needed before anything is pruned (>= 0).
        n_warmup_steps: validations a trial reports before it can be pruned (>= 0): the
            first step that can be pruned is `n_warmup_steps`.
        n_min_trials: matched trials with a finite value needed at a step to judge it (>= 1).
        slack: sparsity a matched trial may lack, e.g. 0.005 (rounding of masks); 0..1.

    Raises:
        ValueError: an argument is out of its range (the message names it).
    """

    def __init__(
        self,
        n_startup_trials: int = 4,
        n_warmup_steps: int = 0,
        n_min_trials: int = 3,
        slack: float = 0.005,
    ) -> None:
        if n_startup_trials < 0:
            raise ValueError(f"n_startup_trials must be >= 0, got {n_startup_trials!r}")
        if n_warmup_steps < 0:
            raise ValueError(f"n_warmup_steps must be >= 0, got {n_warmup_steps!r}")
        if n_min_trials < 1:
            raise ValueError(f"n_min_trials must be >= 1, got {n_min_trials!r}")
        if not 0.0 <= slack <= 1.0:
            raise ValueError(f"slack must be between 0 and 1 inclusive, got {slack!r}")
        self.n_startup_trials, self.n_warmup_steps = n_startup_trials, n_warmup_steps
        self.n_min_trials, self.slack = n_min_trials, slack

    def _judge(self, study: optuna.Study, trial: FrozenTrial) -> dict | None:
        """The numbers behind a judgement at the trial's last step, or None if none is due."""
        step = trial.last_step
        completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not completed or len(completed) < self.n_startup_trials:
            return None
        own = sparsity_at(trial, step)
        matched = [
            t.intermediate_values[step]
            for t in completed
            if step in t.intermediate_values
            and math.isfinite(t.intermediate_values[step])
            and sparsity_at(t, step) >= own - self.slack
        ]
        if len(matched) < self.n_min_trials:
            return None
        reported = [v for v in trial.intermediate_values.values() if math.isfinite(v)]
        maximize = study.direction == StudyDirection.MAXIMIZE
        best = max(reported) if maximize else min(reported)  # as Optuna's MedianPruner
        median = statistics.median(matched)
        below = best < median if maximize else best > median
        return {"step": step, "best": best, "median": median, "peers": len(matched),
                "sparsity": own, "stop": below}  # fmt: skip

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step < self.n_warmup_steps:
            return False
        if not math.isfinite(trial.intermediate_values[step]):
            return True  # diverged: see the class docstring
        judged = self._judge(study, trial)
        return judged is not None and judged["stop"]

    def explain(self, study: optuna.Study, trial: FrozenTrial) -> str:
        """Why the trial was stopped, with the numbers."""
        step = trial.last_step
        if step is not None and not math.isfinite(trial.intermediate_values[step]):
            return f"non-finite value at validation {step}: the weights diverged"
        j = self._judge(study, trial)
        if j is None:
            return ""
        return (
            f"below the matched median at validation {j['step']}: best so far "
            f"{j['best']:.4f} vs median {j['median']:.4f} of {j['peers']} finished trials at "
            f"least as sparse (>= {j['sparsity'] - self.slack:.3f})"
        )


def stop_reason(study: optuna.Study, number: int) -> str:
    """Why the study's pruner stopped trial `number`, in words and numbers (the rules of this
    module explain themselves; Optuna's own say which rule and where)."""
    running = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if t.number == number
    ]
    explain = getattr(study.pruner, "explain", None)
    if running and callable(explain):
        text = explain(study, running[0])
        if text:
            return text
    step = running[0].last_step if running else None
    return f"below {type(study.pruner).__name__}'s threshold at validation {step}"


# How each writer of `pruned_reason` starts its text (this module, bound_pruner.py and
# reporter.py's demand check), and the short kind the report groups stopped trials by.
STOP_KINDS = (
    ("below the matched median", "below matched median"),
    ("cannot win", "cannot beat best"),
    ("non-finite value", "non-finite value (diverged)"),
    ("infeasible: target sparsity", "target below demand"),
)
NO_REASON = "no reason recorded"


def stop_kind(reason: str | None) -> str:
    """The short kind of a recorded `pruned_reason`, e.g. "cannot beat best": the numbers in
    the reason differ per trial, the kind does not, so figures can group stopped trials."""
    text = (reason or "").strip()
    if not text:
        return NO_REASON
    for prefix, kind in STOP_KINDS:
        if text.startswith(prefix):
            return kind
    other = re.match(r"below (\w+)'s threshold", text)  # Optuna's own pruners
    return f"below {other.group(1)}'s threshold" if other else "other"


def build_pruner(kind: str, n_startup_trials: int, n_warmup_steps: int):
    """The pruner named by `search.pruner.kind` (steps are validations)."""
    if kind == "matched":
        return SparsityMatchedPruner(n_startup_trials, n_warmup_steps)
    if kind == "bound":
        from lightning_prune.search.bound_pruner import CannotWinPruner

        return CannotWinPruner(n_startup_trials, n_warmup_steps)
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
