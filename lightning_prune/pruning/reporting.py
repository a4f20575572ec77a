"""The callback's half that reports: masks, summary and `pruning/...` metrics, including in
the main process after a `ddp_spawn` fit (rank 0 leaves them in a file)."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn

from lightning_prune.pruning.stats import build_summary, logged_metrics
from lightning_prune.pruning.trainer_support import read_handoff

HEADLINE = ("pruning/sparsity", "pruning/target", "pruning/event")


class PruningReport(pl.Callback):
    """Mixin of AdaptivePruning: what a user or a logger reads about the pruning."""

    def _metrics(self) -> dict[str, float]:
        return logged_metrics(self.summary(events=False))

    def _log(self, pl_module: pl.LightningModule, metrics: dict[str, float], now: bool) -> None:
        """Every logger gets all metrics at this step; the headline ones also go through
        `pl_module.log`, so ModelCheckpoint and EarlyStopping can monitor them. Hooks where
        Lightning forbids `log` (`on_validation_end`) pass `now=False`: the headline values
        wait for the next training batch."""
        trainer = pl_module.trainer
        if metrics:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
        headline = {k: v for k, v in metrics.items() if k in HEADLINE}
        if not now:
            self._queued.update(headline)
            return
        for name, value in {**self._queued, **headline}.items():
            pl_module.log(name, float(value), on_step=True, on_epoch=False, batch_size=1)
        self._queued = {}

    def _warn_left_dense(self, trainer: pl.Trainer) -> None:
        """At fit end, say so when the model is denser than the run meant: training stopped
        before the ramp reached its target, or weights left dense because they were frozen at
        the first step have been trained since (e.g. unfrozen by BackboneFinetuning)."""
        schedule, sparsity = self.schedule, self.store.sparsity()
        short = schedule.progress < 1.0 and self._clock < schedule.end_step
        if short and schedule.final - sparsity > 1e-3:
            why = "stopped early (EarlyStopping, max_time or should_stop)"
            rank_zero_warn(
                f"AdaptivePruning: training {why if trainer.should_stop else 'ended'} at "
                f"step {self._clock} of the {schedule.total_steps} the ramp was placed on, "
                f"before it reached target_sparsity {schedule.final:.1%} (due at step "
                f"{schedule.end_step}): the model is at {sparsity:.1%}. Reach the target "
                "sooner (a smaller `end`, or total_steps=N for the steps you expect) or let "
                "training run on (EarlyStopping patience, min_epochs)."
            )
        trained = [
            p.name
            for p in self._candidates
            if p.name not in self.store.params and p.param.requires_grad
        ]
        if trained:
            rank_zero_warn(
                f"AdaptivePruning: {trained[:5]}{' ...' if len(trained) > 5 else ''} were frozen "
                "at the first training step, so they were left dense, and have been trained "
                "since (unfrozen): they are neither pruned nor counted in the sparsity. Pass "
                "prune_frozen=True to prune them."
            )

    @property
    def target_sparsity(self) -> float:
        """The current target (lowered by back-offs, raised by "auto")."""
        return self.controller.target if self.controller is not None else self.schedule.final

    @property
    def ramp_progress(self) -> float:
        """Fraction of the sparsity ramp done (1 once it reached the target)."""
        return self.schedule.progress

    def _from_worker(self) -> dict[str, Any] | None:
        """After a ddp_spawn fit the main process reads what rank 0 left (once)."""
        if self.store is None and self._handoff is None:
            self._handoff = read_handoff(self._handoff_path)
        return self._handoff if self.store is None else None

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """Boolean keep-masks by parameter name (True = kept)."""
        handoff = self._from_worker()
        if handoff is not None:
            return dict(handoff["masks"])
        return dict(self.store.masks) if self.store is not None else {}

    def summary(self, events: bool = True) -> dict[str, Any]:
        """Sparsity, target, nonzero/total params, FLOPs (sparse, dense), per-layer, events,
        and the fraction of the model's parameters covered."""
        handoff = self._from_worker()
        if handoff is not None:
            return {**handoff["summary"], "events": handoff["summary"]["events"] if events else []}
        if self.store is None or self._module is None:
            raise RuntimeError("AdaptivePruning.summary() needs a model: call trainer.fit first")
        events = [dict(e) for e in self.controller.events] if events and self.controller else []
        return build_summary(
            self.store, self._module, self._macs, self.target_sparsity, events, self._coverage
        )
