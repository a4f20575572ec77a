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
            raise self._missing_monitor_error(trainer)
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
        self._apply_decision(decision, trainer)
        self._last_validation_clock = self._clock
        self._seen_validation = True
        event = {"pruning/event": float(EVENT_CODES[decision.kind])}
        self._log(pl_module, {**self._metrics(), **event}, now=False)

    def _missing_monitor_error(self, trainer: pl.Trainer) -> RuntimeError:
        """What was logged instead: a step-level value (on_step=True, on_epoch=False) reaches
        `logged_metrics` only, and several validation dataloaders add a suffix to the name."""
        monitor, logs = self.monitor, trainer.callback_metrics
        prefix = f"AdaptivePruning(monitor={monitor!r}): "
        if monitor in trainer.logged_metrics:
            return RuntimeError(
                f"{prefix}{monitor!r} was logged per step only (on_step=True, on_epoch=False), so "
                "validation gave no epoch value for the controller. Log it with "
                f"self.log({monitor!r}, ..., on_epoch=True) in validation_step."
            )
        similar = sorted(k for k in {*logs, *trainer.logged_metrics} if k.startswith(monitor))
        if similar:
            return RuntimeError(
                f"{prefix}no metric named {monitor!r} was logged, but {similar} were (a suffix "
                "such as '/dataloader_idx_0' comes from several validation dataloaders). Pass "
                "one of them as monitor, or log the metric under that exact name."
            )
        return RuntimeError(
            f"{prefix}the monitored metric was never logged. Log it with "
            f"self.log({monitor!r}, ...) in validation, pass one of the logged metrics "
            f"{sorted(logs)}, or set monitor=None."
        )

    def _apply_decision(self, decision: Decision, trainer: pl.Trainer) -> None:
        if decision.kind == "reference" and self.controller.reference_after_start:
            rank_zero_warn(
                "AdaptivePruning: pruning started before the first validation, so the reference "
                f"{self.monitor}={decision.metric:.4f} was measured on a partly pruned model; "
                f"{self._dense_reference_advice(trainer)}"
            )
        if decision.kind == "backoff":
            self.schedule.retarget(decision.new_sparsity)
            self._force_update = True
        elif decision.kind == "raise":
            interval = max(self.frequency, self._clock - self._last_validation_clock)
            self.schedule.retarget(decision.new_sparsity, length=interval)

    def _dense_reference_advice(self, trainer: pl.Trainer) -> str:
        """Why the ramp could not wait for a dense reference. It waits for the first validation,
        but only until a quarter of the ramp before `end` (see `on_train_start`): a later
        `start` does not help, an earlier validation or a longer run does."""
        total, started = self.schedule.total_steps, self.schedule.start_step
        if trainer.fast_dev_run:
            return (
                f"fast_dev_run trains {total} step(s), too few for pruning to wait for a "
                "validation (harmless in a smoke test; a normal run measures it densely)."
            )
        if started > round(self.schedule.start * total):  # it waited, then had to go on
            return (
                f"pruning waited for a validation until step {started}, but the first one ran at "
                f"step {self._clock}. Validate earlier (Trainer(val_check_interval=...)) or train "
                "for more steps."
            )
        return (
            f"pruning started at step {started}, but the first validation ran at step "
            f"{self._clock}: {total} optimizer steps are too few for the ramp to wait for it. "
            "Train for more steps or validate earlier (Trainer(val_check_interval=...))."
        )
