"""The dense reference of a study: the same model, data and epochs without pruning.

Trained once per study (kept in the study's user attrs, so resuming does not redo it),
it is the line the report draws and the bar the pruned trials are judged against. Its
MLflow run, `dense-reference` under the study's parent, has the curves and the shared
metrics (`lightning_prune.run_metrics`), so it sorts beside the trials in one table.
"""

from __future__ import annotations

import optuna
from lightning_prune.search.contract import StudyAttr
from lightning_prune.search.run_states import Tag
from mlflow import MlflowClient
from omegaconf import DictConfig, OmegaConf, open_dict

from lightning_prune import provenance, run_metrics, run_names, tracking
from lightning_prune.tracking import retry
from lightning_prune.train import TrainResult, fit_and_test


def _fit_recorded(cfg: DictConfig, dense_cfg: DictConfig, parent_run_id: str) -> TrainResult:
    """Fit and test into a `dense-reference` run, ended FINISHED, or FAILED on an error."""
    uri, experiment = cfg.tracking.uri, cfg.tracking.experiment
    run_id = retry(
        tracking.start_run,
        uri,
        experiment,
        run_name=run_names.DENSE_REFERENCE,
        parent_run_id=parent_run_id,
        tags={Tag.JOB: "dense-reference", Tag.STUDY: cfg.search.study_name},
    )
    tracking.close_at_exit(uri, run_id)
    provenance.stamp(uri, run_id, "search", dense_cfg.data)
    status = "FAILED"
    try:
        logger = tracking.lightning_logger(uri, experiment, run_id)
        result = fit_and_test(dense_cfg, logger=logger)
        values = {**result.metrics, **run_metrics.model_stats(result.model)}
        step = result.extra["trainer"].global_step
        retry(MlflowClient(uri).log_batch, run_id, metrics=run_metrics.final_metrics(values, step))
        status = "FINISHED"
        return result
    finally:
        tracking.end_run(uri, run_id, status)


def ensure_dense_reference(cfg: DictConfig, study: optuna.Study, parent_run_id: str) -> dict:
    """Return the study's dense reference, training it first when the study has none."""
    if StudyAttr.DENSE_REFERENCE in study.user_attrs:
        return study.user_attrs[StudyAttr.DENSE_REFERENCE]
    dense_cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    with open_dict(dense_cfg):
        dense_cfg.pruning = {}
        dense_cfg.dynamic = {}  # dense: no per-input gates either
        dense_cfg.trainer.enable_progress_bar = False
        dense_cfg.trainer.enable_model_summary = False
    result = _fit_recorded(cfg, dense_cfg, parent_run_id)
    params = sum(p.numel() for p in result.model.parameters())
    reference = {
        "val_acc": result.metrics.get("val_acc"),
        "test_acc": result.metrics.get("test_acc"),
        "params": params,
        "seconds": round(result.seconds, 2),
    }
    study.set_user_attr(StudyAttr.DENSE_REFERENCE, reference)
    client = MlflowClient(cfg.tracking.uri)
    for key in ("val_acc", "test_acc"):
        if reference[key] is not None:
            retry(client.log_metric, parent_run_id, f"dense_{key}", float(reference[key]))
    return reference
