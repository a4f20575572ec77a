"""MLflow records of a study: one parent run per study, one child run per trial.

Several worker processes may write to one SQLite tracking store; SQLite answers a busy
writer with "database is locked", so every write goes through `retry`. (A tracking
server, `tracking.uri=http://...`, needs no retries and works the same.)
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from typing import Any

import optuna
from lightning_prune.search.contract import (
    CurvePoint,
    StudyAttr,
    StudyTracking,
    TrialAttr,
    best_trials,
    record_tracking,
    state_counts,
    tracking_of,
)
from lightning_prune.search.locks import store_init_lock
from lightning_prune.search.optuna_plots import optuna_figures
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from omegaconf import DictConfig, OmegaConf

from lightning_prune import tracking

RETRY_MARKERS = ("locked", "busy", "connection", "timed out", "temporarily")


def retry(fn: Callable[..., Any], *args: Any, attempts: int = 12, **kwargs: Any) -> Any:
    """Call `fn`, retrying with jittered backoff while the store is busy."""
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # MlflowException wraps sqlalchemy's OperationalError
            busy = any(marker in str(err).lower() for marker in RETRY_MARKERS)
            if not busy or attempt == attempts - 1:
                raise
            time.sleep(min(5.0, 0.1 * 2**attempt) * (0.5 + random.random()))
    return None


def _flat(prefix: str, value: Any, out: dict[str, str]) -> dict[str, str]:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flat(f"{prefix}.{key}" if prefix else str(key), inner, out)
    else:
        out[prefix] = str(value)[:500]
    return out


def _log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    items = [Param(k, str(v)[:500]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        retry(client.log_batch, run_id, params=items[i : i + 100])


def start_parent(cfg: DictConfig, study: optuna.Study) -> str:
    """The study's parent run: created once, reused when the study resumes."""
    uri, experiment = cfg.tracking.uri, cfg.tracking.experiment
    with store_init_lock(uri):  # processes started together must not both migrate the DB
        retry(tracking.ensure_experiment, uri, experiment)
    client = MlflowClient(uri)
    recorded = tracking_of(study)
    run_id = recorded.parent_run_id
    if run_id and recorded.uri == uri:
        retry(client.update_run, run_id, status="RUNNING")
        return run_id
    name = cfg.search.study_name
    run_id = retry(
        tracking.start_run,
        uri,
        experiment,
        run_name=f"study:{name}",
        tags={"job": "search", "study": name},
    )
    config = OmegaConf.to_container(cfg, resolve=True)
    _log_params(client, run_id, _flat("", config, {}))
    retry(client.log_dict, run_id, config, "config.json")
    record_tracking(study, StudyTracking(uri, experiment, run_id))
    study.set_user_attr(StudyAttr.CONFIG, json.loads(json.dumps(config, default=str)))
    time.sleep(0.5)  # workers started together: the last writer's run is the parent
    winner = tracking_of(study).parent_run_id
    if winner != run_id:
        retry(client.delete_run, run_id)
    return winner


class TrialRun:
    """The child run of one trial: parameters, the curve, final metrics, state, artifact."""

    def __init__(self, cfg: DictConfig, parent_run_id: str, trial: optuna.Trial) -> None:
        self.client = MlflowClient(cfg.tracking.uri)
        self.run_id = retry(
            tracking.start_run,
            cfg.tracking.uri,
            cfg.tracking.experiment,
            run_name=f"trial_{trial.number}",
            parent_run_id=parent_run_id,
            tags={
                "job": "search-trial",
                "study": cfg.search.study_name,
                "trial_number": str(trial.number),
            },
        )

    def log_params(self, params: dict[str, Any]) -> None:
        _log_params(self.client, self.run_id, params)

    def log_point(self, point: dict[str, Any]) -> None:
        """One validation: val_acc and sparsity at the global step."""
        now = int(time.time() * 1000)
        metrics = [
            Metric(k, float(point[k]), now, int(point[CurvePoint.STEP]))
            for k in (TrialAttr.VAL_ACC, CurvePoint.SPARSITY, CurvePoint.RAMP_PROGRESS)
            if point.get(k) is not None
        ]
        retry(self.client.log_batch, self.run_id, metrics=metrics)

    def log_artifact(self, path: str) -> None:
        retry(self.client.log_artifact, self.run_id, path)

    def finish(
        self, state: str, metrics: dict[str, float], seconds: float, reason: str = ""
    ) -> None:
        """Final metrics, `trial_state` tag (COMPLETE / PRUNED / FAIL), duration, reason."""
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, 0) for k, v in metrics.items() if v is not None]
        batch.append(Metric("duration_s", float(seconds), now, 0))
        retry(self.client.log_batch, self.run_id, metrics=batch)
        retry(self.client.set_tag, self.run_id, "trial_state", state)
        if reason:
            retry(self.client.set_tag, self.run_id, "fail_reason", reason[:5000])
        status = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED"}.get(state, "FAILED")
        if "interrupted" in reason:
            status = "KILLED"
        retry(self.client.set_terminated, self.run_id, status)


def _log_plots(client: MlflowClient, run_id: str, study: optuna.Study) -> list[str]:
    """Optuna's plots as PNG artifacts under plots/; a plot that cannot be drawn is skipped."""
    import matplotlib.pyplot as plt

    multi = len(study.directions) > 1
    names = ("param_importances", "pareto_front" if multi else "optimization_history")
    figures = optuna_figures(study, names)
    for name, figure in figures.items():
        retry(client.log_figure, run_id, figure, f"plots/{name}.png")
        plt.close(figure)
    return list(figures)


def finish_parent(cfg: DictConfig, study: optuna.Study, run_id: str, interrupted: bool) -> None:
    """Best trial, counts and plots on the parent run; KILLED when Ctrl-C stopped it."""
    client = MlflowClient(cfg.tracking.uri)
    counts = state_counts(study)
    now = int(time.time() * 1000)
    metrics = [Metric(f"trials_{k}", float(v), now, 0) for k, v in counts.items()]
    best = best_trials(study)
    if best:
        top = best[0]
        metrics += [
            Metric(f"best_{k}", float(top.user_attrs[k]), now, 0)
            for k in (TrialAttr.VAL_ACC, TrialAttr.TEST_ACC, TrialAttr.SPARSITY)
            if top.user_attrs.get(k) is not None
        ]
        retry(client.set_tag, run_id, "best_trial", str(top.number))
        retry(
            client.log_dict,
            run_id,
            {"number": top.number, "params": top.params, "user_attrs": top.user_attrs},
            "best_trial.json",
        )
    retry(client.log_batch, run_id, metrics=metrics)
    _log_plots(client, run_id, study)
    retry(client.set_terminated, run_id, "KILLED" if interrupted else "FINISHED")
