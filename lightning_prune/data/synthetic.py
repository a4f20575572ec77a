"""Small learnable synthetic images for fast unit tests (no files needed)."""

from __future__ import annotations

import torch

from lightning_prune.data.tensors import TensorDataModule, check_positive


class SyntheticDataModule(TensorDataModule):
    """Class prototypes plus Gaussian noise, shaped like Fashion-MNIST (1x28x28, 10 classes)."""

    def __init__(
        self,
        num_train: int = 512,
        num_val: int = 128,
        num_test: int = 128,
        num_classes: int = 10,
        batch_size: int = 64,
        noise: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, seed=seed)
        for name, value in (
            ("num_train", num_train), ("num_val", num_val),
            ("num_test", num_test), ("num_classes", num_classes),
        ):  # fmt: skip
            check_positive(name, value, allow_none=False)
        self.sizes = (num_train, num_val, num_test)
        self.classes, self.noise = num_classes, noise
        self.setup()

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "train"):
            return
        generator = torch.Generator().manual_seed(self.seed)
        prototypes = torch.randn(self.classes, 1, 28, 28, generator=generator)
        splits = []
        for size in self.sizes:
            labels = torch.randint(0, self.classes, (size,), generator=generator)
            noise = torch.randn(size, 1, 28, 28, generator=generator) * self.noise
            splits.append((prototypes[labels] + noise, labels))
        self.train, self.val, self.test = splits
