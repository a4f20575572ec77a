"""Shared helpers of the pruning tests: tiny data, a fast trainer, and an exact-zero checker."""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from lightning_prune.data import SyntheticDataModule
from lightning_prune.models import Classifier
from lightning_prune.pruning import AdaptivePruning

torch.set_num_threads(1)


def tiny_data(seed: int = 0, num_train: int = 256, batch_size: int = 32, noise: float = 1.0):
    return SyntheticDataModule(
        num_train=num_train, num_val=64, num_test=64, batch_size=batch_size, noise=noise, seed=seed
    )


def trainer(callbacks, max_epochs: int = 2, **kwargs) -> pl.Trainer:
    options = dict(
        max_epochs=max_epochs,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=False,
        accelerator="cpu",
        devices=1,
    )
    options.update(kwargs)
    return pl.Trainer(**options)


class ZeroChecker(pl.Callback):
    """Runs after AdaptivePruning: pruned weights and their Adam first moments are exactly zero;
    their second moments are 0 (state created since the last mask update) or inert (> 0.5)."""

    def __init__(self, pruning: AdaptivePruning) -> None:
        self.pruning = pruning
        self.checked_steps = 0
        self.max_sparsity_seen = 0.0
        self.inert_seen = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        state = pl_module.state_dict()
        optimizer = trainer.optimizers[0]
        for name, mask in self.pruning.masks.items():
            assert torch.all(state[name][~mask] == 0), f"{name} has nonzero pruned weights"
            param = self.pruning.store.params[name].param
            moment = optimizer.state[param]["exp_avg"]
            assert torch.all(moment[~mask] == 0), f"exp_avg of {name} nonzero where pruned"
            second = optimizer.state[param]["exp_avg_sq"][~mask]
            assert torch.all((second == 0) | (second > 0.5)), f"exp_avg_sq of {name}"
            self.inert_seen |= bool((second > 0.5).any())
        self.checked_steps += 1
        self.max_sparsity_seen = max(self.max_sparsity_seen, self.pruning.store.sparsity())


def classifier(network: str = "lenet300", **kwargs) -> Classifier:
    return Classifier(network, **kwargs)
