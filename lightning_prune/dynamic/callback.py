"""`DynamicGating`: a Lightning callback that gates channels per input while the model trains."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from lightning_prune.dynamic.gates import (
    GATE_MODES,
    GatedLayer,
    GatingError,
    attach_gates,
    set_budget,
)
from lightning_prune.dynamic.usage import GateUsage, UsageMeter


def _check_options(
    budget, warmup_epochs, ramp_epochs, include, bins, measure_samples, gate
) -> tuple[str, ...] | None:
    if isinstance(budget, bool) or not isinstance(budget, int | float) or not 0 < budget <= 1:
        raise GatingError(f"DynamicGating budget must be in (0, 1], got {budget!r}")
    if gate not in GATE_MODES:
        raise GatingError(f"DynamicGating gate must be one of {GATE_MODES}, got {gate!r}")
    for name, value in (("warmup_epochs", warmup_epochs), ("ramp_epochs", ramp_epochs)):
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise GatingError(f"DynamicGating {name} must be a number >= 0, got {value!r}")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise GatingError(f"DynamicGating bins must be an integer >= 1, got {bins!r}")
    if measure_samples is not None and (
        isinstance(measure_samples, bool) or not isinstance(measure_samples, int)
        or measure_samples < 0
    ):  # fmt: skip
        raise GatingError(
            "DynamicGating measure_samples must be an integer >= 0 or None,"
            f" got {measure_samples!r}"
        )
    if include is None:
        return None
    patterns = (include,) if isinstance(include, str) else tuple(include)
    if not patterns or not all(isinstance(p, str) and p for p in patterns):
        raise GatingError(
            f"DynamicGating include must be module-name patterns (strings), got {include!r}"
        )
    return patterns


class DynamicGating(Callback):
    """Per-input channel gating (Feature Boosting and Suppression style) for any LightningModule.

    In `setup`, before `configure_optimizers` runs, each chosen Conv2d/Linear gets a small gate
    (pooled input -> linear -> ReLU saliency) that keeps the top ceil(budget * channels) output
    channels per input and scales them by their saliency; each gate is registered inside its
    layer (`<layer>.dynamic_gate`), so the model's own optimizer trains it and the state_dict
    holds it. Errors about options or layers come from the constructor or `setup`.

    Args:
        budget: fraction of output channels kept per gated layer, in (0, 1]. Consecutive gated
            layers compound: the next layer also reads only the kept channels, so the executed
            MACs fraction of the model (see `gated_forward_batch1`) ends at or below `budget`.
        warmup_epochs: epochs during which every channel runs (the gates still learn).
        ramp_epochs: after warm-up, the kept fraction falls linearly from 1 to `budget` over
            this many epochs (0 jumps at once).
        include: module-name patterns (fnmatch, names as in `pl_module.named_modules()`, e.g.
            "net.0") of the layers to gate; None gates every layer the chain rule allows
            (`lightning_prune.dynamic.gates`). Each pattern must match, and each match must
            pass the rule, or `setup` raises naming it.
        bins: a gated Linear wider than this reads its input average-pooled into `bins`
            features, so the gate costs far less than the layer.
        gate: "topk" keeps ceil(budget * channels) channels of every input (each input costs
            the same); "threshold" keeps the channels whose saliency passes a cut-off learnt
            in training (the top `budget` share of a batch's saliencies), so the budget holds
            on average and inputs differ in cost (`lightning_prune.dynamic.gates.ChannelGate`).
        measure_samples: at each validation, this many validation inputs also run through the
            batch-1 skipping path, which counts the MACs that ran; their mean is logged as
            `dynamic/macs_fraction` and the whole measurement kept in `usage`
            (`lightning_prune.dynamic.usage.GateUsage`). None measures every input, 0 none.

    Logs `dynamic/budget` (the kept fraction now) each training epoch.

    Example::

        trainer = pl.Trainer(callbacks=[AdaptivePruning(...), DynamicGating(budget=0.3)])
    """

    def __init__(
        self,
        budget: float = 0.5,
        warmup_epochs: float = 0,
        ramp_epochs: float = 1,
        include: Sequence[str] | str | None = None,
        bins: int = 32,
        measure_samples: int | None = 256,
        gate: str = "topk",
    ) -> None:
        self.include = _check_options(
            budget, warmup_epochs, ramp_epochs, include, bins, measure_samples, gate
        )
        self.gate = gate
        self.budget, self.bins, self.measure_samples = float(budget), bins, measure_samples
        self.usage: GateUsage | None = None
        self._meter: UsageMeter | None = None
        self.warmup_epochs, self.ramp_epochs = float(warmup_epochs), float(ramp_epochs)
        self.layers: list[GatedLayer] = []
        self.current = 1.0 if warmup_epochs or ramp_epochs else self.budget

    def budget_at(self, progress: float) -> float:
        """Kept fraction after `progress` epochs (fractional) of training."""
        if progress < self.warmup_epochs:
            return 1.0
        if self.ramp_epochs <= 0:
            return self.budget
        done = min(1.0, (progress - self.warmup_epochs) / self.ramp_epochs)
        return 1.0 - (1.0 - self.budget) * done

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" and not self.layers:
            self.current = self.budget  # evaluating a gated model: the trained budget
        self.layers = attach_gates(pl_module, self.include, self.current, self.bins, self.gate)

    def on_train_batch_start(self, trainer, pl_module, batch: Any, batch_idx: int) -> None:
        batches = trainer.num_training_batches
        per_epoch = batches if isinstance(batches, int) and batches > 0 else 1
        self.current = self.budget_at(trainer.current_epoch + batch_idx / per_epoch)
        set_budget(pl_module, self.current)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.log("dynamic/budget", self.current)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        measure = self.measure_samples != 0 and not trainer.sanity_checking
        self._meter = UsageMeter(pl_module, self.measure_samples) if measure else None

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self._meter is not None and dataloader_idx == 0:
            self._meter.add(batch)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        meter, self._meter = self._meter, None
        if meter is None or not meter.usage.samples:
            return
        self.usage = meter.usage
        pl_module.log("dynamic/macs_fraction", self.usage.mean_fraction)

    def state_dict(self) -> dict[str, Any]:
        return {"current": self.current, "layers": [item.name for item in self.layers]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.current = float(state_dict.get("current", self.current))
