"""Data modules: Fashion-MNIST from IDX files, and synthetic data for tests."""

from lightning_prune.data.fashion_mnist import CLASSES, FashionMNISTDataModule
from lightning_prune.data.idx import DataFileError, read_idx
from lightning_prune.data.sources import DataNotFoundError, locate
from lightning_prune.data.synthetic import SyntheticDataModule
from lightning_prune.data.tensors import TensorDataModule

__all__ = [
    "CLASSES",
    "DataFileError",
    "DataNotFoundError",
    "FashionMNISTDataModule",
    "SyntheticDataModule",
    "TensorDataModule",
    "locate",
    "read_idx",
]
