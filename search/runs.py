"""MLflow records of a study: one parent run per study, one child run per trial.

Several worker processes may write to one SQLite tracking store; SQLite answers a busy
writer with "database is locked", so every write goes through `retry`. (A tracking
server, `tracking.uri=http://...`, needs no retries and works the same.)

No run is left RUNNING: each is ended by the process that started it, by that process's
exit hook when it stops on an error, and otherwise by whichever process later notices
(search/run_states.py).

Names (`study-<name>`, `trial-<n>`), the shared metric names and where final values go
(`lightning_prune.run_metrics`: at the run's last step, never step 0) are the same as for
every other run; each run carries its provenance (`lightning_prune.provenance`).
"""

from __future__ import annotations

import json
import time
from typing import Any

import optuna
import pytorch_lightning as pl
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
from lightning_prune.search.retries import worker_id
from lightning_prune.search.run_states import Tag, mlflow_status, repair, stop_tags
from lightning_prune.search.study_lock import study_lock
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig, OmegaConf

from lightning_prune import provenance, run_metrics, run_names, tracking
from lightning_prune.tracking import retry

SOURCE = "search"  # `lightning-prune search` made these runs


def flat_params(prefix: str, value: Any, out: dict[str, str]) -> dict[str, str]:
    """A nested config as `a.b.c` keys with string values (MLflow's parameter form)."""
    if isinstance(value, dict):
        for key, inner in value.items():
            flat_params(f"{prefix}.{key}" if prefix else str(key), inner, out)
    else:
        out[prefix] = str(value)[:500]
    return out


def _log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    items = [Param(k, str(v)[:500]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        retry(client.log_batch, run_id, params=items[i : i + 100])


def _adoptable(client: MlflowClient, run_id: str | None) -> bool:
    """The recorded parent run still exists and is not deleted."""
    if not run_id:
        return False
    try:
        return retry(client.get_run, run_id).info.lifecycle_stage == "active"
    except MlflowException:
        return False


def _create_or_adopt(cfg: DictConfig, study: optuna.Study) -> tuple[str, bool]:
    """(parent run id, created): the recorded parent when there is one, else a new one.
    Must run under the study lock: the read and the record form one step."""
    uri, experiment = cfg.tracking.uri, cfg.tracking.experiment
    client = MlflowClient(uri)
    recorded = tracking_of(study)
    name = cfg.search.study_name
    if recorded.uri == uri and _adoptable(client, recorded.parent_run_id):
        run_id = recorded.parent_run_id
        retry(client.update_run, run_id, status="RUNNING", name=run_names.study_run(name))
        return run_id, False
    run_id = retry(
        tracking.start_run,
        uri,
        experiment,
        run_name=run_names.study_run(name),
        tags={Tag.JOB: "search", Tag.STUDY: name},
    )
    record_tracking(study, StudyTracking(uri, experiment, run_id))
    return run_id, True


def start_parent(cfg: DictConfig, study: optuna.Study) -> str:
    """The study's parent run: created once, adopted when the study resumes or another
    machine joins it (exactly one even when searches start together); then the study's
    leftover RUNNING runs are ended (`run_states.repair`)."""
    uri, experiment = cfg.tracking.uri, cfg.tracking.experiment
    with store_init_lock(uri):  # processes started together must not both migrate the DB
        retry(tracking.ensure_experiment, uri, experiment)
    with study_lock(cfg.search.storage, study.study_name):
        run_id, created = _create_or_adopt(cfg, study)
    tracking.close_at_exit(uri, run_id)
    if created:
        client = MlflowClient(uri)
        provenance.stamp(uri, run_id, SOURCE, cfg.data)
        config = OmegaConf.to_container(cfg, resolve=True)
        _log_params(client, run_id, flat_params("", config, {}))
        retry(client.log_dict, run_id, config, "config.json")
        study.set_user_attr(StudyAttr.CONFIG, json.loads(json.dumps(config, default=str)))
    repair(study, uri, experiment, run_id, ended_by=worker_id())
    return run_id


class TrialRun:
    """The child run of one trial: parameters, curves, final metrics, state, artifact.

    Kept on MlflowClient rather than Lightning's MLFlowLogger, which writes without `retry` (the
    workers share one SQLite store) and ends the run FINISHED when fit ends, before the trial's
    state (a stopped trial ends KILLED) is known.
    """

    def __init__(self, cfg: DictConfig, parent_run_id: str, trial: optuna.Trial) -> None:
        self.client = MlflowClient(cfg.tracking.uri)
        self.trial = trial
        self.run_id = retry(
            tracking.start_run,
            cfg.tracking.uri,
            cfg.tracking.experiment,
            run_name=run_names.trial_run(trial.number),
            parent_run_id=parent_run_id,
            tags={
                Tag.JOB: "search-trial",
                Tag.STUDY: cfg.search.study_name,
                Tag.TRIAL_NUMBER: str(trial.number),
            },
        )
        tracking.close_at_exit(cfg.tracking.uri, self.run_id)
        provenance.stamp(cfg.tracking.uri, self.run_id, SOURCE, cfg.data)
        self.last_step = 0  # the curve's last global step: where the final values go
        self.last_ms = 0  # and its last timestamp: the final values come after it

    def log_params(self, params: dict[str, Any]) -> None:
        _log_params(self.client, self.run_id, params)

    def log_metrics(self, values: dict[str, float | None], step: int) -> None:
        """Curve points at the trainer's global `step` (None values skipped)."""
        now = max(int(time.time() * 1000), self.last_ms)
        metrics = [Metric(k, float(v), now, int(step)) for k, v in values.items() if v is not None]
        if metrics:
            retry(self.client.log_batch, self.run_id, metrics=metrics)
            self.last_step, self.last_ms = max(self.last_step, int(step)), now

    def log_point(self, point: dict[str, Any]) -> None:
        """One validation (the reporter's curve point): val_acc, sparsity, ramp progress."""
        keys = (TrialAttr.VAL_ACC, CurvePoint.SPARSITY, CurvePoint.RAMP_PROGRESS)
        self.log_metrics({k: point.get(k) for k in keys}, point[CurvePoint.STEP])

    def curves(self) -> pl.Callback:
        """A callback for the trial's Trainer that logs `train_loss` and `val_loss` curves."""
        return LossCurves(self)

    def log_artifact(self, path: str) -> None:
        retry(self.client.log_artifact, self.run_id, path)

    def finish(
        self, state: str, metrics: dict[str, float], seconds: float, reason: str = ""
    ) -> None:
        """Final metrics at the curve's last step, the Optuna state as the `trial_state` tag
        (COMPLETE / PRUNED / FAIL) with the `stop_reason` of a stopped trial, duration,
        reason; the status follows the state (`run_states.mlflow_status`)."""
        values = {**metrics, "duration_s": seconds}
        names = (*run_metrics.SHARED, "duration_s")
        batch = run_metrics.final_metrics(values, self.last_step, self.last_ms, names)
        attrs = self.trial.user_attrs if state == "PRUNED" else {}
        tags = [RunTag(k, v) for k, v in stop_tags(state, attrs).items()]
        if reason:
            tags.append(RunTag(Tag.REASON, reason[:5000]))
        try:
            retry(self.client.log_batch, self.run_id, metrics=batch, tags=tags)
        finally:  # the status first of all: a run must not stay RUNNING
            status = mlflow_status(state, interrupted="interrupted" in reason)
            retry(self.client.set_terminated, self.run_id, status)
            tracking.ended(self.run_id)


class LossCurves(pl.Callback):
    """Logs the module's `train_loss` (each training epoch) and `val_loss` (each validation)
    into a trial's run at the global step, beside the reporter's val_acc and sparsity."""

    def __init__(self, run: TrialRun) -> None:
        self.run = run

    def _log(self, trainer: pl.Trainer, name: str) -> None:
        value = trainer.callback_metrics.get(name)
        if value is not None and value.numel() == 1:
            self.run.log_metrics({name: float(value)}, trainer.global_step)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(trainer, "train_loss")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._log(trainer, "val_loss")


def _log_plots(client: MlflowClient, run_id: str, study: optuna.Study) -> list[str]:
    """Optuna's plots as PNG artifacts under plots/; a plot that cannot be drawn is skipped.
    `lightning-prune report` adds its own history (every trial, stopped ones by why) to the
    same run: drawing it here would make the search depend on the report."""
    import matplotlib.pyplot as plt

    multi = len(study.directions) > 1
    names = ("param_importances", "pareto_front" if multi else "optimization_history")
    figures = optuna_figures(study, names)
    for name, figure in figures.items():
        retry(client.log_figure, run_id, figure, f"plots/{name}.png")
        plt.close(figure)
    return list(figures)


def _summarise(client: MlflowClient, run_id: str, study: optuna.Study) -> None:
    """Counts, the best feasible trial's results under the shared names (`val_acc`, ...),
    its number as the `best_trial` tag, and plots on the parent run; the metrics at step =
    finished trials, so a resumed study draws its best so far."""
    counts = state_counts(study)
    step = sum(counts.get(k, 0) for k in ("complete", "pruned", "fail"))
    values = {f"trials_{k}": v for k, v in counts.items()}
    names = tuple(values)
    best = best_trials(study)
    if best:
        top = best[0]
        values |= {k: top.user_attrs.get(k) for k in run_metrics.SHARED}
        names += run_metrics.SHARED
        retry(client.set_tag, run_id, "best_trial", str(top.number))
        retry(
            client.log_dict,
            run_id,
            {"number": top.number, "params": top.params, "user_attrs": top.user_attrs},
            "best_trial.json",
        )
    metrics = run_metrics.final_metrics(values, step, names=names)
    retry(client.log_batch, run_id, metrics=metrics)
    _log_plots(client, run_id, study)


def finish_parent(
    cfg: DictConfig, study: optuna.Study, run_id: str, interrupted: bool, failed: bool = False
) -> None:
    """Summarise and end the parent run: KILLED when Ctrl-C stopped the search, FAILED when
    the search failed (an error, or no trial completed) or the summary itself fails (the
    error still propagates), else FINISHED."""
    client = MlflowClient(cfg.tracking.uri)
    status = "FAILED"
    try:
        _summarise(client, run_id, study)
        status = "KILLED" if interrupted else "FAILED" if failed else "FINISHED"
    finally:
        retry(client.set_terminated, run_id, status)
        tracking.ended(run_id)
