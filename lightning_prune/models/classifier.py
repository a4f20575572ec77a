"""One generic image classifier LightningModule around any network."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from lightning_prune.models.networks import build_network

OPTIMIZERS = ("adam", "sgd")


class Classifier(pl.LightningModule):
    """Cross-entropy classifier that logs `val_acc`, `val_loss`, `test_acc` and `test_loss`.

    Args:
        network: a built-in name ("lenet300", "lenet5", "vgg_small") or any nn.Module.
        num_classes: number of output classes.
        optimizer: "adam" or "sgd".
        lr: learning rate, > 0.
        momentum: SGD momentum (ignored by Adam).
        weight_decay: L2 penalty, >= 0.
    """

    def __init__(
        self,
        network: str | nn.Module = "lenet300",
        num_classes: int = 10,
        optimizer: str = "adam",
        lr: float = 1e-3,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"model.optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        if not isinstance(lr, int | float) or lr <= 0:
            raise ValueError(f"model.lr must be a positive number, got {lr!r}")
        if not isinstance(weight_decay, int | float) or weight_decay < 0:
            raise ValueError(f"model.weight_decay must be >= 0, got {weight_decay!r}")
        self.save_hyperparameters(ignore=["network"] if isinstance(network, nn.Module) else None)
        self.net = (
            network if isinstance(network, nn.Module) else build_network(network, num_classes)
        )
        self.example_input_array = torch.zeros(1, 1, 28, 28)
        self.metrics = nn.ModuleDict(
            {split: MulticlassAccuracy(num_classes, average="micro") for split in ("val", "test")}
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def _evaluate(self, batch, split: str) -> None:
        x, y = batch
        logits = self(x)
        self.metrics[split](logits, y)
        self.log(f"{split}_loss", F.cross_entropy(logits, y), on_epoch=True, prog_bar=True)
        self.log(f"{split}_acc", self.metrics[split], on_epoch=True, prog_bar=True)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        x = batch[0] if isinstance(batch, list | tuple) else batch
        return self(x).softmax(dim=-1)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = self.parameters()
        if self.hparams.optimizer == "sgd":
            return torch.optim.SGD(
                params,
                lr=self.hparams.lr,
                momentum=self.hparams.momentum,
                weight_decay=self.hparams.weight_decay,
            )
        return torch.optim.Adam(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
