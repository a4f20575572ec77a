import gzip
import hashlib

import numpy as np
import pytest
import torch

from lightning_prune.data import (
    DataFileError,
    DataNotFoundError,
    FashionMNISTDataModule,
    SyntheticDataModule,
    locate,
    read_idx,
)
from lightning_prune.data import sources as locate_module
from tests.conftest import needs_fmnist


def _write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape
    )
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_read_idx_round_trip(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "x.gz", array)
    assert np.array_equal(read_idx(tmp_path / "x.gz"), array)


def test_truncated_and_corrupt_files_give_clear_errors(tmp_path):
    array = np.zeros((10, 28, 28), dtype=np.uint8)
    _write_idx(tmp_path / "full.gz", array)
    raw = gzip.decompress((tmp_path / "full.gz").read_bytes())
    (tmp_path / "short.gz").write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(DataFileError, match="truncated"):
        read_idx(tmp_path / "short.gz")
    (tmp_path / "cut.gz").write_bytes((tmp_path / "full.gz").read_bytes()[:40])
    with pytest.raises(DataFileError, match="corrupt or truncated"):
        read_idx(tmp_path / "cut.gz")
    (tmp_path / "junk.gz").write_bytes(gzip.compress(b"\x01\x02\x03\x04hello"))
    with pytest.raises(DataFileError, match="magic"):
        read_idx(tmp_path / "junk.gz")


def test_missing_data_error_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(locate_module, "SYSTEM_DIR", tmp_path / "nowhere")
    monkeypatch.delenv("LIGHTNING_PRUNE_DATA", raising=False)
    with pytest.raises(DataNotFoundError) as err:
        locate(tmp_path / "empty", allow_download=False)
    message = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "data.data_dir" in message and "LIGHTNING_PRUNE_DATA" in message


def test_env_var_folder_is_used(tmp_path, monkeypatch):
    for name in locate_module.FILES.values():
        (tmp_path / name).write_bytes(b"")
    monkeypatch.setenv("LIGHTNING_PRUNE_DATA", str(tmp_path))
    assert locate(None, allow_download=False) == tmp_path


@needs_fmnist
def test_fashion_mnist_split_normalisation_and_subsets():
    full = FashionMNISTDataModule(seed=0)
    full.setup()
    assert len(full.train[1]) == 55000 and len(full.val[1]) == 5000
    assert len(full.test[1]) == 10000
    assert abs(float(full.train[0].mean())) < 1e-3 and abs(float(full.train[0].std()) - 1) < 1e-3
    assert full.num_classes == 10
    small = FashionMNISTDataModule(seed=0, subset=5000, val_subset=1000, test_subset=500)
    small.setup()
    assert [len(s[1]) for s in (small.train, small.val, small.test)] == [5000, 1000, 500]
    # the validation subset is drawn from the same seeded hold-out as the full split
    assert torch.equal(small.val[1], full.val[1][:1000])
    other = FashionMNISTDataModule(seed=1, subset=5000)
    other.setup()
    assert not torch.equal(other.train[1], small.train[1])
    images, labels = next(iter(small.train_dataloader()))
    assert images.shape == (128, 1, 28, 28) and labels.dtype == torch.int64


def test_bad_options_name_the_option():
    with pytest.raises(ValueError, match="data.subset"):
        FashionMNISTDataModule(subset=0)
    with pytest.raises(ValueError, match="data.batch_size"):
        SyntheticDataModule(batch_size=-1)


def test_shuffle_depends_on_epoch_and_seed_only():
    data = SyntheticDataModule(num_train=100, batch_size=10, seed=3)
    loader = data.train_dataloader()
    first = [labels.tolist() for _, labels in loader]
    loader.sampler.set_epoch(1)
    second = [labels.tolist() for _, labels in loader]
    again = SyntheticDataModule(num_train=100, batch_size=10, seed=3).train_dataloader()
    again.sampler.set_epoch(1)
    assert second == [labels.tolist() for _, labels in again] and first != second


def _served(tmp_path, monkeypatch, md5: dict[str, str]) -> None:
    """Serve four files from a local folder as the download, with these checksums."""
    served = tmp_path / "served"
    served.mkdir()
    for name in locate_module.FILES.values():
        (served / name).write_bytes(name.encode())
    monkeypatch.setattr(locate_module, "DOWNLOAD_URL", served.as_uri() + "/")
    monkeypatch.setattr(locate_module, "MD5", md5)
    monkeypatch.setattr(locate_module, "SYSTEM_DIR", tmp_path / "nowhere")
    monkeypatch.setattr(locate_module, "DEFAULT_CACHE", tmp_path / "cache")
    monkeypatch.delenv("LIGHTNING_PRUNE_DATA", raising=False)


def test_download_keeps_files_whose_checksum_matches(tmp_path, monkeypatch):
    names = locate_module.FILES.values()
    _served(tmp_path, monkeypatch, {n: hashlib.md5(n.encode()).hexdigest() for n in names})
    assert locate(None) == tmp_path / "cache"
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(names)


def test_a_download_with_a_wrong_checksum_names_the_file_and_keeps_nothing(tmp_path, monkeypatch):
    names = list(locate_module.FILES.values())
    md5 = {n: hashlib.md5(n.encode()).hexdigest() for n in names}
    md5[names[1]] = "0" * 32
    _served(tmp_path, monkeypatch, md5)
    with pytest.raises(DataFileError, match=f"{names[1]} downloaded from .* has MD5"):
        locate(None)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [names[0]]


def test_the_real_download_is_https_with_a_checksum_per_file():
    assert locate_module.DOWNLOAD_URL.startswith("https://")
    assert set(locate_module.MD5) == set(locate_module.FILES.values())
    assert all(len(digest) == 32 for digest in locate_module.MD5.values())
