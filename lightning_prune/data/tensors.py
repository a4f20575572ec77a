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
    """Batches of indices, reshuffled per epoch from (seed, epoch) so resumed runs match.

    It counts the batches it handed out, so a checkpoint taken mid-epoch can resume at the
    next one; the count is exact because the loader runs in the main process (no workers
    fetching ahead).
    """

    def __init__(self, size: int, batch_size: int, shuffle: bool, seed: int) -> None:
        self.size, self.batch_size, self.shuffle, self.seed = size, batch_size, shuffle, seed
        self.epoch = 0
        self.position = 0  # batches of `epoch` handed out so far
        self._resume_at = 0  # batches the next pass skips (set by `load_state_dict`)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self._resume_at = 0
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.size // self.batch_size)

    def __iter__(self):
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.size, generator=generator)
        else:
            order = torch.arange(self.size)
        self.position, self._resume_at = self._resume_at, 0
        for i in range(self.position * self.batch_size, self.size, self.batch_size):
            self.position += 1
            yield order[i : i + self.batch_size].tolist()

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """The next pass continues `epoch` after its first `position` batches (none if the
        epoch was finished: the loop then moves on to the next epoch)."""
        self.epoch = int(state["epoch"])
        position = int(state["position"])
        self._resume_at = position if position < len(self) else 0


class _ResumableLoader(DataLoader):
    """A DataLoader Lightning saves in step checkpoints and resumes mid-epoch (it looks for
    `state_dict` / `load_state_dict` on the loader itself, not on its sampler)."""

    def state_dict(self) -> dict[str, int]:
        sampler = self.sampler  # Lightning may have replaced ours (a distributed sampler)
        return sampler.state_dict() if isinstance(sampler, _EpochBatches) else {}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state and isinstance(self.sampler, _EpochBatches):
            self.sampler.load_state_dict(state)


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
        return _ResumableLoader(dataset, sampler=sampler, batch_size=None)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test, shuffle=False)
