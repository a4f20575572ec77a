"""The callback's state in a checkpoint: masks, shadows, statistics, schedule and controller,
all tensors and plain values, so `torch.load(weights_only=True)` reads it."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from typing_extensions import override


class PruningState(pl.Callback):
    """Mixin of AdaptivePruning: Lightning's `state_dict` / `load_state_dict` for callbacks."""

    @override
    def state_dict(self) -> dict[str, Any]:
        """Masks, shadows, running statistics, schedule and controller (weights_only-safe)."""
        if self.store is None:
            return {}
        return {
            "masks": {n: m.detach().cpu().clone() for n, m in self.store.masks.items()},
            "shadows": self.shadows.state_dict() if self.shadows is not None else {},
            "stats": self.stats.state_dict(),
            "criterion": self.criterion.state_dict(),
            "schedule": self.schedule.state_dict(),
            "controller": self.controller.state_dict() if self.controller else {},
            "applied_goal": self.applied_goal,
            "clock": self._clock,
            "last_validation_clock": self._last_validation_clock,
            # between two ramp steps: a step checkpoint can fall into the wait for the dense
            # reference, before an optimizer-state refresh, or after a back-off's validation
            "hold_until": self._hold_until,
            "refresh_at": self._refresh_at,
            "force_update": self._force_update,
            "seen_validation": self._seen_validation,
            "queued": dict(self._queued),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if self.store is None:
            self._pending_state = state_dict
            return
        self._pending_state = None
        masks = state_dict["masks"]
        by_name = {p.name: p for p in self._candidates}
        unknown = set(masks) - set(by_name)
        if unknown:
            raise ValueError(
                f"AdaptivePruning: checkpoint masks do not match the model: {sorted(unknown)}"
            )
        if set(masks) != set(self.store.masks):  # frozen weights were left out in that run
            self._build_store([by_name[n] for n in by_name if n in masks])
        self.store.set_masks(masks)
        if self.shadows is not None:
            self.shadows.load_state_dict(state_dict.get("shadows", {}))
        device = next(iter(self.store.params.values())).param.device
        self.stats.load_state_dict(state_dict.get("stats", {}), device=device)
        self.criterion.load_state_dict(state_dict.get("criterion", {}))
        self.schedule.load_state_dict(state_dict["schedule"])
        if self.controller is not None and state_dict.get("controller"):
            self.controller.load_state_dict(state_dict["controller"])
        self.applied_goal = float(state_dict.get("applied_goal", 0.0))
        self._clock = int(state_dict.get("clock", 0))
        self._last_validation_clock = int(state_dict.get("last_validation_clock", 0))
        self._hold_until = int(state_dict.get("hold_until", -1))
        self._refresh_at = int(state_dict.get("refresh_at", -1))
        self._force_update = bool(state_dict.get("force_update", False))
        self._seen_validation = bool(state_dict.get("seen_validation", False))
        self._queued = {k: float(v) for k, v in state_dict.get("queued", {}).items()}
        # a Tuner's temporary checkpoint is taken before the ramp was placed: place it again
        self._ramp_placed = self.schedule.total_steps > 0
        self._roles_known = self._roles_known and self._ramp_placed
