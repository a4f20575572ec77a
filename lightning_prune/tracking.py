"""MLflow plumbing: the local store, experiments with artifacts beside it, and nested runs."""

from __future__ import annotations

import logging
from pathlib import Path

from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME
from pytorch_lightning.loggers import MLFlowLogger

for _name in ("mlflow.store.db.utils", "alembic.runtime.migration"):
    logging.getLogger(_name).setLevel(logging.WARNING)


def sqlite_file(uri: str) -> Path | None:
    """The database file of a local SQLite store (`sqlite:///runs/mlflow.db`), else None.

    MLflow tracking URIs only; Optuna storage URLs are parsed by `lightning_prune.search.contract`.
    """
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def prepare_store(uri: str) -> None:
    """Create the folder of a local SQLite store so MLflow can create the database."""
    path = sqlite_file(uri)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)


_EXPERIMENT_IDS: dict[tuple[str, str], str] = {}  # per process: a search asks once per trial


def ensure_experiment(uri: str, name: str) -> str:
    """Return the experiment id, creating it (artifacts next to a local store) if needed."""
    path = sqlite_file(uri)  # a relative store path means another store in another folder
    key = (str(path.resolve()) if path else uri, name)
    known = _EXPERIMENT_IDS.get(key)
    if known is not None and (path is None or path.exists()):
        return known
    experiment_id = _find_or_create(uri, name)
    _EXPERIMENT_IDS[key] = experiment_id
    return experiment_id


def _find_or_create(uri: str, name: str) -> str:
    prepare_store(uri)
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    path = sqlite_file(uri)
    location = (path.parent / "artifacts").resolve().as_uri() if path else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # another worker created it first
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def start_run(
    uri: str,
    experiment: str,
    run_name: str | None = None,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    """Create a run (nested under `parent_run_id` when given) and return its id."""
    client = MlflowClient(uri)
    all_tags = dict(tags or {})
    if parent_run_id:
        all_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
    if run_name:
        all_tags[MLFLOW_RUN_NAME] = run_name
    run = client.create_run(ensure_experiment(uri, experiment), tags=all_tags, run_name=run_name)
    return run.info.run_id


def lightning_logger(uri: str, experiment: str, run_id: str) -> MLFlowLogger:
    """A Lightning logger writing into an existing run (never the ./mlruns fallback)."""
    return MLFlowLogger(experiment_name=experiment, tracking_uri=uri, run_id=run_id)
