"""Fashion-MNIST as a LightningDataModule: seeded 55k/5k split, training-set normalisation."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from lightning_prune.data.idx import DataFileError, read_idx
from lightning_prune.data.sources import FILES, locate
from lightning_prune.data.tensors import TensorDataModule, check_positive

CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip


def _load_pair(folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoded images and labels of one split; cached per process (a search runs many trials
    in one process, and decompressing the files costs about a second each time)."""
    files = (folder / FILES[f"{split}_images"], folder / FILES[f"{split}_labels"])
    stamps = tuple((str(f.resolve()), (st := f.stat()).st_mtime_ns, st.st_size) for f in files)
    return _decode_pair(folder, split, stamps)


@functools.lru_cache(maxsize=4)
def _decode_pair(folder: Path, split: str, stamps: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    images = read_idx(folder / FILES[f"{split}_images"])
    labels = read_idx(folder / FILES[f"{split}_labels"])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataFileError(
            f"{folder}: {split} images {images.shape} and labels {labels.shape} do not match"
        )
    x = torch.from_numpy(images.astype("float32") / 255.0).unsqueeze(1)
    return x, torch.from_numpy(labels.astype("int64"))


class FashionMNISTDataModule(TensorDataModule):
    """Fashion-MNIST from the standard IDX files.

    Args:
        data_dir: folder with the four IDX .gz files, used alone (an error when they are not
            there); None: $LIGHTNING_PRUNE_DATA alone when set, else
            /usr/share/datasets/fashion-mnist, else a download into ~/.cache.
        batch_size: batch size of every loader.
        val_size: images held out of the 60k training set for validation (seeded).
        subset: keep only this many training images (quick runs), e.g. 5000.
        val_subset: keep only this many validation images, e.g. 1000.
        test_subset: keep only this many test images.
        seed: seed of the split, the subsets and the shuffling.
        download: allow fetching the files when no local copy exists.
    """

    def __init__(
        self,
        data_dir: str | None = None,
        batch_size: int = 128,
        val_size: int = 5000,
        subset: int | None = None,
        val_subset: int | None = None,
        test_subset: int | None = None,
        seed: int = 0,
        download: bool = True,
    ) -> None:
        super().__init__(batch_size=batch_size, seed=seed)
        for name, value in (
            ("val_size", val_size), ("subset", subset),
            ("val_subset", val_subset), ("test_subset", test_subset),
        ):  # fmt: skip
            check_positive(name, value, allow_none=name != "val_size")
        if val_size >= 60000:
            raise ValueError(f"data.val_size must be below 60000, got {val_size}")
        self.data_dir, self.val_size, self.download = data_dir, val_size, download
        self.subset, self.val_subset, self.test_subset = subset, val_subset, test_subset
        self._ready = False

    def prepare_data(self) -> None:
        locate(self.data_dir, allow_download=self.download)

    def check_files(self) -> None:
        """Decode every file now (cached for `setup`), so a corrupt one fails before training
        rather than after the tracking run was opened."""
        folder = locate(self.data_dir, allow_download=self.download)
        for split in ("train", "test"):
            _load_pair(folder, split)

    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        folder = locate(self.data_dir, allow_download=self.download)
        images, labels = _load_pair(folder, "train")
        test_images, test_labels = _load_pair(folder, "test")
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.seed))
        val_idx, train_idx = order[: self.val_size], order[self.val_size :]
        train_idx = train_idx[: self.subset] if self.subset else train_idx
        val_idx = val_idx[: self.val_subset] if self.val_subset else val_idx
        test_end = self.test_subset or len(test_labels)
        mean, std = images[train_idx].mean(), images[train_idx].std()
        self.train = ((images[train_idx] - mean) / std, labels[train_idx])
        self.val = ((images[val_idx] - mean) / std, labels[val_idx])
        self.test = ((test_images[:test_end] - mean) / std, test_labels[:test_end])
        self._ready = True
