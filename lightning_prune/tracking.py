"""MLflow plumbing: the local store, experiments with artifacts beside it, nested runs, and
runs a process must not leave RUNNING when it exits."""

from __future__ import annotations

import atexit
import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import RunTag
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


RETRY_MARKERS = ("locked", "busy", "connection", "timed out", "temporarily")


def retry(fn: Callable[..., Any], *args: Any, attempts: int = 12, **kwargs: Any) -> Any:
    """Call `fn`, retrying with jittered backoff while the store is busy: several processes
    writing one SQLite store get "database is locked" (a tracking server needs no retries)."""
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # MlflowException wraps sqlalchemy's OperationalError
            busy = any(marker in str(err).lower() for marker in RETRY_MARKERS)
            if not busy or attempt == attempts - 1:
                raise
            time.sleep(min(5.0, 0.1 * 2**attempt) * (0.5 + random.random()))
    return None


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


# --- ending runs --------------------------------------------------------------------------

REASON_TAG = "fail_reason"  # why a run ended FAILED or KILLED
ENDED_BY_TAG = "ended_by"  # who ended a run its own process could not end ("exit", host:pid)

_OPEN: dict[str, str] = {}  # run id -> tracking URI: runs this process must end before exiting


def close_at_exit(uri: str, run_id: str) -> None:
    """Promise to end `run_id`: if this process exits with it still RUNNING (an error, a
    second Ctrl-C), the exit hook ends it FAILED instead of leaving it RUNNING forever."""
    _OPEN[run_id] = uri


def end_run(uri: str, run_id: str, status: str, tags: dict[str, str] | None = None) -> None:
    """Tag and terminate a run, deleted or not (MLflow refuses updates to a deleted run, so
    one is restored for the moment it takes and deleted again)."""
    client = MlflowClient(uri)
    deleted = retry(client.get_run, run_id).info.lifecycle_stage == "deleted"
    if deleted:
        retry(client.restore_run, run_id)
    try:
        if tags:
            batch = [RunTag(key, str(value)[:5000]) for key, value in tags.items()]
            retry(client.log_batch, run_id, tags=batch)
        retry(client.set_terminated, run_id, status)
    finally:
        if deleted:
            retry(client.delete_run, run_id)
    _OPEN.pop(run_id, None)


def ended(run_id: str) -> None:
    """`run_id` was ended by other means (e.g. `set_terminated`): no exit hook for it."""
    _OPEN.pop(run_id, None)


@atexit.register
def _end_open_runs() -> None:
    for run_id, uri in list(_OPEN.items()):
        path = sqlite_file(uri)
        if path is not None and not path.exists():  # never create a store just to end a run
            continue
        try:
            if MlflowClient(uri).get_run(run_id).info.status == "RUNNING":
                reason = "the process exited before ending this run (an error or an abort)"
                end_run(uri, run_id, "FAILED", {REASON_TAG: reason, ENDED_BY_TAG: "exit"})
        except Exception:  # the store is gone or unreachable: nothing more can be done here
            pass
