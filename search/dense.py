"""The dense reference of a study: the same model, data and epochs without pruning.

Trained once per study (kept in the study's user attrs, so resuming does not redo it),
it is the line the report draws and the bar the pruned trials are judged against.
"""

from __future__ import annotations

import optuna
from lightning_prune.search.contract import StudyAttr
from mlflow import MlflowClient
from omegaconf import DictConfig, OmegaConf, open_dict

from lightning_prune.train import fit_and_test


def ensure_dense_reference(cfg: DictConfig, study: optuna.Study, parent_run_id: str) -> dict:
    """Return the study's dense reference, training it first when the study has none."""
    if StudyAttr.DENSE_REFERENCE in study.user_attrs:
        return study.user_attrs[StudyAttr.DENSE_REFERENCE]
    dense_cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    with open_dict(dense_cfg):
        dense_cfg.pruning = {}
        dense_cfg.trainer.enable_progress_bar = False
        dense_cfg.trainer.enable_model_summary = False
    result = fit_and_test(dense_cfg)
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
            client.log_metric(parent_run_id, f"dense_{key}", float(reference[key]))
    return reference
