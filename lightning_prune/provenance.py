"""Where a run came from, stamped on every MLflow run: the command, the code (git commit and
package version) and the data (an MLflow dataset input: name, source, digest; never the data).

MLflow fills `mlflow.source.*` only for runs its fluent API starts; runs made with
`MlflowClient.create_run`, as all of ours are, get nothing, so without this the UI's Source
column is empty and nobody can tell which code and which data produced a number.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import subprocess
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import DatasetInput, InputTag, RunTag
from mlflow.utils.mlflow_tags import (
    MLFLOW_DATASET_CONTEXT,
    MLFLOW_GIT_COMMIT,
    MLFLOW_SOURCE_NAME,
    MLFLOW_SOURCE_TYPE,
)
from omegaconf import DictConfig, OmegaConf

from lightning_prune import __version__
from lightning_prune.tracking import retry

VERSION_TAG = "lightning_prune.version"
FASHION_MNIST = "lightning_prune.data.FashionMNISTDataModule"
# Options that change how the data is read, not which images are in which split.
NOT_IN_DIGEST = ("batch_size", "data_dir", "download")


@functools.lru_cache(maxsize=8)
def git_commit(folder: str) -> str | None:
    """HEAD's commit when `folder` is inside a git work tree, else None (no git, no repo)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True,
                             text=True, timeout=5, check=False)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40,64}", commit) else None


def source_tags(command: str) -> dict[str, str]:
    """`mlflow.source.name` ("lightning-prune search"), type, git commit, package version."""
    tags = {
        MLFLOW_SOURCE_NAME: f"lightning-prune {command}",
        MLFLOW_SOURCE_TYPE: "LOCAL",
        VERSION_TAG: __version__,
    }
    commit = git_commit(os.getcwd())
    if commit:
        tags[MLFLOW_GIT_COMMIT] = commit
    return tags


def dataset_name(target: str) -> str:
    """`...FashionMNISTDataModule` -> "fashion-mnist", `...SyntheticDataModule` -> "synthetic"."""
    stem = target.rsplit(".", 1)[-1].removesuffix("DataModule") or target or "data"
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "-", stem).lower()


@functools.lru_cache(maxsize=16)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _data_files(target: str, options: Mapping[str, Any]) -> tuple[Path | None, list[Path]]:
    """The folder and files the data comes from, when known without reading the data."""
    if target == FASHION_MNIST:
        from lightning_prune.data.sources import FILES, DataNotFoundError, locate

        try:
            folder = locate(options.get("data_dir"), allow_download=False)
        except DataNotFoundError:  # not downloaded yet: the config alone names it
            return None, []
        return folder.resolve(), [folder / name for name in sorted(FILES.values())]
    named = options.get("data_dir")
    if isinstance(named, str) and Path(named).expanduser().is_dir():
        return Path(named).expanduser().resolve(), []
    return None, []


def data_digest(options: Mapping[str, Any], files: list[Path]) -> str:
    """12 hex digits over the file contents and the options that pick the images: the same
    digest means the same images in the same splits, wherever the files sit."""
    picked = {k: v for k, v in options.items() if k not in NOT_IN_DIGEST}
    hashes = {f.name: _file_sha256(str(f), (s := f.stat()).st_size, s.st_mtime_ns) for f in files}
    text = json.dumps({"options": picked, "files": hashes}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def dataset(data: Mapping[str, Any] | DictConfig):
    """An MLflow `MetaDataset` for the `data` config: the files' folder as a local source (the
    data module's `_target_` as a code source when no files are known), a content digest."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    options = OmegaConf.to_container(data, resolve=True) if isinstance(data, DictConfig) else data
    options = dict(options or {})
    target = str(options.get("_target_", ""))
    folder, files = _data_files(target, options)
    if folder is not None:
        with warnings.catch_warnings():  # "can be interpreted in multiple ways": both local
            warnings.simplefilter("ignore")
            source = resolve_dataset_source(str(folder))
    else:
        source = CodeDatasetSource({"_target_": target})
    return MetaDataset(source, name=dataset_name(target), digest=data_digest(options, files))


def stamp(
    uri: str,
    run_id: str,
    command: str,
    data: Mapping[str, Any] | DictConfig | None = None,
    context: str = "training",
) -> None:
    """Tag `run_id` with its source, commit and version, and log `data` as its input dataset
    (`context`: "training" for runs that train, "evaluation" for an ensemble)."""
    client = MlflowClient(uri)
    tags = [RunTag(key, value) for key, value in source_tags(command).items()]
    retry(client.log_batch, run_id, tags=tags)
    if data is not None:
        entity = dataset(data)._to_mlflow_entity()
        inputs = [DatasetInput(entity, [InputTag(MLFLOW_DATASET_CONTEXT, context)])]
        retry(client.log_inputs, run_id, inputs)
