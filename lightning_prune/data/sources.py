"""Finding the Fashion-MNIST files: the folder the user named, else the Debian package or a
download."""

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
    """Where to look: the folder the user named (the option, else the environment variable)
    alone, or the Debian package's folder when none was named."""
    named = data_dir or os.environ.get(ENV_VAR)
    return [Path(named).expanduser()] if named else [SYSTEM_DIR]


def _named_folder_error(folder: Path, data_dir: str | Path | None) -> DataNotFoundError:
    """A folder the user named lacks the files: say so, rather than read or fetch others."""
    option = f"data.data_dir={data_dir}" if data_dir else f"${ENV_VAR}={folder}"
    missing = [name for name in FILES.values() if not (folder / name).is_file()]
    what = "does not exist" if not folder.exists() else f"lacks {', '.join(missing)}"
    if folder.exists() and not folder.is_dir():
        what = "is not a folder"
    return DataNotFoundError(
        f"{option}: {folder} {what}. Put the four Fashion-MNIST IDX .gz files "
        f"({', '.join(FILES.values())}) there, or set data.data_dir=null (and unset {ENV_VAR}) "
        f"to use /usr/share/datasets/fashion-mnist (`apt-get install dataset-fashion-mnist`) "
        "or a download."
    )


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
    """Return a folder holding all four files.

    A folder the user named (`data_dir`, else $LIGHTNING_PRUNE_DATA) is the only place
    looked at, and nothing is downloaded into it: a typo must not train on other data.
    Otherwise the Debian package's folder, then a download into ~/.cache.
    """
    searched = candidate_dirs(data_dir)
    if data_dir or os.environ.get(ENV_VAR):
        if not _complete(searched[0]):
            raise _named_folder_error(searched[0], data_dir)
        return searched[0]
    for folder in (*searched, DEFAULT_CACHE):
        if _complete(folder):
            return folder
    reason = "downloads are disabled (data.download=false)"
    if allow_download:
        try:
            download(DEFAULT_CACHE)
            return DEFAULT_CACHE
        except OSError as err:
            reason = f"the download from {DOWNLOAD_URL} failed: {err}"
    looked = ", ".join(str(p) for p in (*searched, DEFAULT_CACHE))
    raise DataNotFoundError(
        f"Fashion-MNIST not found (looked in {looked}) and {reason}. Get it with "
        f"`apt-get install dataset-fashion-mnist` (Debian), or put the four IDX .gz files "
        f"({', '.join(FILES.values())}) in a folder and pass data.data_dir=<folder> "
        f"or set {ENV_VAR}."
    )
