"""The callback's half that listens: each validation's metric goes to the controller, whose
decision (proceed, pause, back off, raise) moves the sparsity ramp."""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_warn
from typing_extensions import override

from lightning_prune.pruning.controller import EVENT_CODES, Decision


class MetricFeedback(pl.Callback):
    """Mixin of AdaptivePruning: `on_validation_end` and what a decision does to the ramp."""

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.controller is None or trainer.sanity_checking or self.store is None:
            return
        if trainer.state.fn != "fit":
            return
        logs = trainer.callback_metrics
        if self.monitor not in logs:
            raise RuntimeError(
                f"AdaptivePruning(monitor={self.monitor!r}): the monitored metric was never "
                f"logged. Log it with self.log({self.monitor!r}, ...) in validation, pass one of "
                f"the logged metrics {sorted(logs)}, or set monitor=None."
            )
        metric = float(logs[self.monitor].squeeze())
        if trainer.world_size > 1:
            metric = float(trainer.strategy.broadcast(metric, src=0))
        decision = self.controller.observe(
            metric,
            trainer.global_step,
            pruning_started=self.applied_goal > 0,
            ramp_done=self.schedule.progress >= 1.0,
            sparsity=self.store.sparsity(),
        )
        self._apply_decision(decision)
        self._last_validation_clock = self._clock
        self._seen_validation = True
        event = {"pruning/event": float(EVENT_CODES[decision.kind])}
        self._log(pl_module, {**self._metrics(), **event}, now=False)

    def _apply_decision(self, decision: Decision) -> None:
        if decision.kind == "reference" and self.controller.reference_after_start:
            rank_zero_warn(
                "AdaptivePruning: pruning started before the first validation, so the reference "
                f"{self.monitor}={decision.metric:.4f} was measured on a partly pruned model; "
                "use start > 0 to measure it on the dense model."
            )
        if decision.kind == "backoff":
            self.schedule.retarget(decision.new_sparsity)
            self._force_update = True
        elif decision.kind == "raise":
            interval = max(self.frequency, self._clock - self._last_validation_clock)
            self.schedule.retarget(decision.new_sparsity, length=interval)
