"""Masks on the averaged copy that Lightning's weight averaging (`EMAWeightAveraging`,
`WeightAveraging`) keeps: validation runs on it and checkpoints store it, so a pruned weight must
be zero there too, not an average of the values it had before it was pruned."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from typing_extensions import override

try:  # Lightning >= 2.6
    from pytorch_lightning.callbacks import WeightAveraging
except ImportError:  # pragma: no cover - older Lightning has no averaged copy to mask
    WeightAveraging = None


def averaged_copies(trainer: pl.Trainer, names: set[str]) -> list[dict[str, torch.Tensor]]:
    """The parameters named `names` in every averaged copy the Trainer's callbacks keep."""
    if WeightAveraging is None:
        return []
    copies = []
    for callback in trainer.callbacks:
        average = getattr(callback, "_average_model", None)
        if isinstance(callback, WeightAveraging) and average is not None:
            params = dict(average.module.named_parameters())
            copies.append({n: params[n] for n in names if n in params})
    return copies


class AveragedMasks(pl.Callback):
    """Mixin of AdaptivePruning: pruned weights are exactly zero in averaged copies wherever
    Lightning reads them (validation, checkpoints), whichever callback runs first."""

    @torch.no_grad()
    def _mask_averaged(self, trainer: pl.Trainer) -> bool:
        """Mask every averaged copy; False when the Trainer keeps none."""
        if self.store is None:
            return False
        masks = self.store.float_masks()
        copies = averaged_copies(trainer, set(masks))
        for copy in copies:
            names = [n for n in copy if copy[n].shape == masks[n].shape]
            if names:
                torch._foreach_mul_([copy[n] for n in names], [masks[n] for n in names])
        return bool(copies)

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The averaging callback swaps its copy in at this hook, before or after this one."""
        if self._mask_averaged(trainer):
            self.store.apply_to_weights()

    @override
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """The averaging callback may already have put its copy in `state_dict` (without one,
        the weights it holds are the model's, exact zeros already)."""
        if not self._mask_averaged(trainer):
            return
        masks = self.store.float_masks()
        for key in ("state_dict", "current_model_state"):
            state = checkpoint.get(key) or {}
            for name, mask in masks.items():
                value = state.get(name)
                if isinstance(value, torch.Tensor) and value.shape == mask.shape:
                    state[name] = value * mask.to(value.device, value.dtype)
