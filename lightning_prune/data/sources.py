"""Finding the Fashion-MNIST files: the folder the user named, else the Debian package or a
download.

A plain urllib download is kept rather than torchvision's dataset class, which the base install
lacks: https from the dataset's own GitHub repository, each file kept only when its MD5 is the
published one (the checksums torchvision lists).
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path

from lightning_prune.data.idx import DataFileError

FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
ENV_VAR = "LIGHTNING_PRUNE_DATA"
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
DOWNLOAD_URL = (
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"
)
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


def _fetch(url: str, partial: Path, timeout: float) -> str:
    """Stream `url` into `partial`; return the MD5 of what arrived."""
    digest = hashlib.md5(usedforsecurity=False)
    with urllib.request.urlopen(url, timeout=timeout) as response, partial.open("wb") as out:
        while chunk := response.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def download(target: Path, timeout: float = 30.0) -> None:
    """Fetch the four files into `target`; a file is kept only when its MD5 is the published
    one (a mismatch raises DataFileError naming the file and keeps nothing of it)."""
    target.mkdir(parents=True, exist_ok=True)
    for name in FILES.values():
        if (target / name).is_file():
            continue
        partial = target / (name + ".part")
        try:
            got = _fetch(DOWNLOAD_URL + name, partial, timeout)
            if got != MD5[name]:
                raise DataFileError(
                    f"{name} downloaded from {DOWNLOAD_URL + name} has MD5 {got}, expected "
                    f"{MD5[name]}: the download is corrupt or the file changed upstream, so it "
                    f"was not kept. Try again, or put the four IDX .gz files in a folder and "
                    f"pass data.data_dir=<folder>."
                )
            partial.rename(target / name)
        finally:
            partial.unlink(missing_ok=True)


def locate(data_dir: str | Path | None = None, allow_download: bool = True) -> Path:
    """Return a folder holding all four files.

    A folder the user named (`data_dir`, else $LIGHTNING_PRUNE_DATA) is the only place
    looked at, and nothing is downloaded into it: a typo must not train on other data.
    Otherwise the Debian package's folder, then `DEFAULT_CACHE` (~/.cache/lightning_prune/
    fashion-mnist), downloading into it when it lacks a file.
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
