"""An in-memory LightningDataModule base: whole batches are sliced from tensors at once."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class _Batches(Dataset):
    """Indexing with a list of indices returns a whole batch (no per-sample collate)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index):
        return self.images[index], self.labels[index]


class _EpochBatches(Sampler[list[int]]):
    """Batches of indices, reshuffled per epoch from (seed, epoch) so resumed runs match."""

    def __init__(self, size: int, batch_size: int, shuffle: bool, seed: int) -> None:
        self.size, self.batch_size, self.shuffle, self.seed = size, batch_size, shuffle, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.size // self.batch_size)

    def __iter__(self):
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.size, generator=generator)
        else:
            order = torch.arange(self.size)
        yield from (
            order[i : i + self.batch_size].tolist() for i in range(0, self.size, self.batch_size)
        )


def check_positive(name: str, value: int | None, allow_none: bool = True) -> None:
    """Raise a ValueError naming the option when a count is not a positive integer."""
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"data.{name} must be a positive integer, got {value!r}")


class TensorDataModule(pl.LightningDataModule):
    """Holds train/val/test tensors; subclasses fill them in `setup`."""

    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]

    def __init__(self, batch_size: int = 128, seed: int = 0) -> None:
        super().__init__()
        check_positive("batch_size", batch_size, allow_none=False)
        self.batch_size = batch_size
        self.seed = seed

    @property
    def num_classes(self) -> int:
        return int(self.train[1].max()) + 1

    def _loader(self, split: tuple[torch.Tensor, torch.Tensor], shuffle: bool) -> DataLoader:
        dataset = _Batches(*split)
        sampler = _EpochBatches(len(dataset), self.batch_size, shuffle, self.seed)
        return DataLoader(dataset, sampler=sampler, batch_size=None)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test, shuffle=False)
