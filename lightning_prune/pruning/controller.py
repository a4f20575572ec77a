"""The feedback controller: the validation metric decides whether pruning may go on.

At each validation it compares `monitor` with the reference measured before pruning started:
within `tolerance` the ramp proceeds (and, with target "auto", the target is raised toward
`max_sparsity`); outside it the ramp pauses; still outside after `patience` validations the
controller backs off: the sparsity drops by `backoff_step` and the best pruned weights regrow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

EVENT_CODES = {"reference": 0, "proceed": 1, "pause": 2, "backoff": 3, "raise": 4}
MODES = ("max", "min")


@dataclass
class Decision:
    """What the controller decided at one validation."""

    kind: str
    step: int
    metric: float
    target: float
    new_sparsity: float | None = None  # set for backoff/raise: where the ramp should go now

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.step, "kind": self.kind, "metric": self.metric, "target": self.target}


class Controller:
    """Proceed / pause / back off / raise from a stream of validation metrics.

    Args:
        mode: "max" if a higher metric is better (accuracy), "min" for a loss.
        tolerance: allowed absolute drop from the reference (0.01 = one accuracy point).
        patience: validations outside tolerance before backing off.
        backoff_step: sparsity removed by one back-off (e.g. 0.02).
        target: final sparsity of the ramp.
        auto: raise the target while within tolerance, up to `max_sparsity`.
        max_sparsity: ceiling for "auto".
        raise_factor: one raise multiplies the remaining density by this (0.5 halves it).
    """

    def __init__(
        self,
        mode: str,
        tolerance: float,
        patience: int,
        backoff_step: float,
        target: float,
        auto: bool = False,
        max_sparsity: float = 0.99,
        raise_factor: float = 0.5,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode, self.tolerance, self.patience = mode, tolerance, patience
        self.backoff_step, self.auto = backoff_step, auto
        self.max_sparsity, self.raise_factor = max_sparsity, raise_factor
        self.target = target
        self.ceiling = max_sparsity if auto else target
        self.reference: float | None = None
        self.reference_after_start = False
        self.paused = False
        self.wait = 0
        self.events: list[dict[str, Any]] = []

    def _within(self, metric: float) -> bool:
        assert self.reference is not None
        if self.mode == "max":
            return metric >= self.reference - self.tolerance
        return metric <= self.reference + self.tolerance

    def observe(
        self, metric: float, step: int, pruning_started: bool, ramp_done: bool, sparsity: float
    ) -> Decision:
        """Decide from one validation metric; `sparsity` is the current mask sparsity."""
        if not math.isfinite(metric):
            metric = -math.inf if self.mode == "max" else math.inf
        if not pruning_started or self.reference is None:
            self.reference = metric
            self.reference_after_start = pruning_started
            return self._record(Decision("reference", step, metric, self.target))
        if self._within(metric):
            self.paused, self.wait = False, 0
            if self.auto and ramp_done and self.target < self.ceiling - 1e-9:
                new = min(self.ceiling, 1.0 - (1.0 - self.target) * self.raise_factor)
                self.target = new
                return self._record(Decision("raise", step, metric, new, new_sparsity=new))
            return self._record(Decision("proceed", step, metric, self.target))
        self.paused = True
        self.wait += 1
        if self.wait < self.patience:
            return self._record(Decision("pause", step, metric, self.target))
        self.paused, self.wait = False, 0
        lowered = max(0.0, sparsity - self.backoff_step)
        self.target = min(self.target, lowered)
        self.ceiling = self.target
        return self._record(Decision("backoff", step, metric, self.target, new_sparsity=lowered))

    def _record(self, decision: Decision) -> Decision:
        self.events.append(decision.as_dict())
        return decision

    def state_dict(self) -> dict[str, Any]:
        keys = ("target", "ceiling", "reference", "reference_after_start", "paused", "wait")
        return {**{k: getattr(self, k) for k in keys}, "events": [dict(e) for e in self.events]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, [dict(e) for e in value] if key == "events" else value)
