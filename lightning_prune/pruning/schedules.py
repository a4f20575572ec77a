"""Sparsity over optimizer steps: cubic (Zhu & Gupta 2017), linear or one-shot ramps.

The ramp runs on its own clock that ticks once per optimizer step after `start`, so the controller
can pause it (the clock stops) and re-target it (a new ramp from the current sparsity).
"""

from __future__ import annotations

from typing import Any

SCHEDULES = ("cubic", "linear", "oneshot")


def ramp_fraction(kind: str, progress: float) -> float:
    """Fraction of the way from the initial to the final sparsity at `progress` in [0, 1]."""
    progress = min(1.0, max(0.0, progress))
    if kind == "cubic":
        return 1.0 - (1.0 - progress) ** 3
    if kind == "linear":
        return progress
    if kind == "oneshot":
        return 1.0
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {kind!r}")


class SparsitySchedule:
    """A ramp from `initial` to `final` sparsity between two optimizer steps.

    Args:
        kind: "cubic", "linear" or "oneshot".
        start: fraction of the total optimizer steps where pruning starts.
        end: fraction where the ramp reaches the target (ignored by "oneshot").
    """

    def __init__(self, kind: str, start: float, end: float) -> None:
        if kind not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {kind!r}")
        self.kind, self.start, self.end = kind, start, end
        self.total_steps = 0
        self.start_step = 0
        self.end_step = 0
        self.initial = 0.0
        self.final = 0.0
        self.length = 1
        self.elapsed = 0
        self.started = False

    def bind(self, total_steps: int, final: float) -> None:
        """Fix the step range from the trainer's total optimizer steps (once per fit)."""
        self.total_steps = max(1, int(total_steps))
        self.start_step = int(round(self.start * self.total_steps))
        self.end_step = max(self.start_step + 1, int(round(self.end * self.total_steps)))
        self.final = final
        self.length = 1 if self.kind == "oneshot" else self.end_step - self.start_step

    def delay_start(self, step: int) -> None:
        """Start at `step` instead (not yet started), still reaching the target at `end`."""
        self.start_step = step
        if self.kind != "oneshot":
            self.length = max(1, self.end_step - step)

    def tick(self, step: int, paused: bool) -> None:
        """Advance the clock by one optimizer step unless paused or before `start`."""
        if step < self.start_step:
            return
        self.started = True
        if not paused and self.elapsed < self.length:
            self.elapsed += 1

    @property
    def progress(self) -> float:
        """Fraction of the current ramp done (1 once it reached its final sparsity)."""
        if not self.started:
            return 0.0
        return min(1.0, self.elapsed / self.length)

    def goal(self) -> float:
        """Sparsity the masks should have now."""
        if not self.started:
            return 0.0
        return self.initial + (self.final - self.initial) * ramp_fraction(self.kind, self.progress)

    def update_due(self, step: int, frequency: int, applied: float, swapping: bool) -> bool:
        """Masks are recomputed every `frequency` steps while the goal moves (or weights swap
        during the ramp), and at the step the ramp ends rather than up to `frequency` late."""
        if not self.started:
            return False
        moved = abs(self.goal() - applied) > 1e-9
        if (step - self.start_step) % frequency == 0:
            return moved or (swapping and step < self.end_step)
        return self.progress >= 1.0 and moved

    def before_update(self, step: int, frequency: int, window: int, after_ramp: bool) -> bool:
        """Whether `step` is among the `window` steps up to a scheduled mask update (after the
        ramp only if `after_ramp`: a controller may still move the target)."""
        if step < self.start_step:
            return self.start_step - step < window
        if not after_ramp and step >= self.end_step and self.progress >= 1.0:
            return False
        return (-(step - self.start_step)) % frequency < window

    def steps_to_update(self, step: int, frequency: int) -> int:
        """Steps from `step` to the next scheduled mask update (0 at an update step)."""
        return (self.start_step - step) % frequency

    def retarget(self, final: float, length: int | None = None) -> None:
        """Start a new ramp from the current goal to `final` (immediate when length is None)."""
        current = self.goal()
        self.initial, self.final = current, final
        self.elapsed = 0
        self.length = max(1, int(length)) if length else 1
        if length is None:
            self.elapsed = self.length

    def state_dict(self) -> dict[str, Any]:
        keys = ("total_steps", "start_step", "end_step", "initial", "final", "length", "elapsed")
        return {**{k: getattr(self, k) for k in keys}, "started": self.started}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)
