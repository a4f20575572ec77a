"""Finding the Fashion-MNIST files: a given folder, the Debian package, or a download."""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
ENV_VAR = "LIGHTNING_PRUNE_DATA"
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
DOWNLOAD_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
DEFAULT_CACHE = Path.home() / ".cache" / "lightning_prune" / "fashion-mnist"


class DataNotFoundError(FileNotFoundError):
    """None of the places we look for the data holds it, and it could not be fetched."""


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in FILES.values())


def candidate_dirs(data_dir: str | Path | None) -> list[Path]:
    """Where to look, in order: the option, the environment variable, the Debian package."""
    dirs = [Path(d).expanduser() for d in (data_dir, os.environ.get(ENV_VAR)) if d]
    return [*dirs, SYSTEM_DIR]


def download(target: Path, timeout: float = 30.0) -> None:
    """Fetch the four files from the dataset's official location into `target`."""
    target.mkdir(parents=True, exist_ok=True)
    for name in FILES.values():
        if (target / name).is_file():
            continue
        partial = target / (name + ".part")
        with urllib.request.urlopen(DOWNLOAD_URL + name, timeout=timeout) as response:
            partial.write_bytes(response.read())
        partial.rename(target / name)


def locate(data_dir: str | Path | None = None, allow_download: bool = True) -> Path:
    """Return a folder holding all four files, downloading them when nothing local has them."""
    searched = candidate_dirs(data_dir)
    for folder in searched:
        if _complete(folder):
            return folder
    target = searched[0] if data_dir or os.environ.get(ENV_VAR) else DEFAULT_CACHE
    if _complete(target):
        return target
    reason = "downloads are disabled (data.download=false)"
    if allow_download:
        try:
            download(target)
            return target
        except OSError as err:
            reason = f"the download from {DOWNLOAD_URL} failed: {err}"
    looked = ", ".join(str(p) for p in dict.fromkeys([*searched, target]))
    raise DataNotFoundError(
        f"Fashion-MNIST not found (looked in {looked}) and {reason}. Get it with "
        f"`apt-get install dataset-fashion-mnist` (Debian), or put the four IDX .gz files "
        f"({', '.join(FILES.values())}) in a folder and pass data.data_dir=<folder> "
        f"or set {ENV_VAR}."
    )
