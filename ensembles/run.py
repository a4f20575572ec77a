"""The `ensemble` command: study -> top-k members -> weights on val -> test report -> MLflow.

`fit_ensemble` sees validation data only and `evaluate_ensemble` test data only, so the
test split cannot leak into member selection or weight fitting.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pytorch_lightning as pl
from lightning_prune.ensembles.artifact import (
    ensemble_file,
    ensemble_folder,
    log_ensemble,
    save_ensemble,
)
from lightning_prune.ensembles.distill import (
    Distilled,
    add_student_row,
    check_distill_options,
    distill_members,
)
from lightning_prune.ensembles.evaluate import EnsembleReport, evaluate_ensemble, report_table
from lightning_prune.ensembles.model import COMBINES, WeightedEnsemble, combine_log_probs
from lightning_prune.ensembles.predictions import accuracy, collect_log_probs
from lightning_prune.ensembles.selection import (
    DIVERSITIES,
    Member,
    SelectionError,
    open_study,
    select_members,
)
from lightning_prune.ensembles.weighting import WEIGHTINGS, fit_weights
from lightning_prune.search.contract import DEFAULT_STORAGE, StudyAttr, tracking_of
from omegaconf import DictConfig, OmegaConf

from lightning_prune import run_names
from lightning_prune.config import ConfigError
from lightning_prune.preflight import check_data
from lightning_prune.pruning.stats import nonzero_params
from lightning_prune.targets import UntrustedTargetError, allow_targets, safe_instantiate

DATA_FROM = ("study", "config")  # the study's recorded data config, or this run's `data`


@dataclass
class EnsembleResult:
    """Everything one `ensemble` run produced."""

    ensemble: WeightedEnsemble
    members: list[Member]
    report: EnsembleReport
    notes: list[str] = field(default_factory=list)
    artifact: Path | None = None
    run_id: str | None = None
    model_uri: str | None = None
    tracking_uri: str | None = None
    weighting: str = ""
    distilled: Distilled | None = None


def fit_ensemble(
    members: list[Member],
    val_loader: Iterable,
    weighting: str = "optimized",
    *,
    combine: str = "prob",
    temperature: float = 0.01,
    greedy_rounds: int = 25,
) -> WeightedEnsemble:
    """Build the ensemble and fit its weights on `val_loader` (validation data only)."""
    names = [m.name for m in members]
    log_probs, labels = collect_log_probs([m.model for m in members], val_loader, names)
    weights = fit_weights(weighting, log_probs, labels, combine=combine,
                          temperature=temperature, greedy_rounds=greedy_rounds)  # fmt: skip
    models = [m.model for m in members]
    return WeightedEnsemble(models, weights, combine, num_classes=log_probs.shape[-1])


def _check_options(options: DictConfig) -> None:
    """Bad settings fail before the study or any checkpoint is opened (a bad greedy_rounds or
    latency_batch would otherwise fail only after every member was loaded and run)."""
    allowed = {"weighting": WEIGHTINGS, "combine": COMBINES, "diversity": DIVERSITIES,
               "data_from": DATA_FROM}  # fmt: skip
    for key, values in allowed.items():
        if options[key] not in values:
            raise ConfigError(f"ensemble.{key} must be one of {values}, got {options[key]!r}")
    if options.k < 1:
        raise ConfigError(f"ensemble.k must be >= 1, got {options.k}")
    for key, least, note in (("pool", 0, " (0: 2k)"), ("greedy_rounds", 1, ""),
                             ("latency_batch", 1, "")):  # fmt: skip
        value = options.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ConfigError(f"ensemble.{key} must be an integer >= {least}{note}, got {value!r}")
    if options.temperature <= 0:
        raise ConfigError(f"ensemble.temperature must be > 0, got {options.temperature}")
    problem = check_distill_options(options)
    if problem:
        raise ConfigError(problem)


def _data_config(cfg: DictConfig, study: optuna.Study) -> tuple[dict[str, Any], str]:
    """The data the study's trials were validated on (its recorded `config.data`), unless
    `ensemble.data_from` says otherwise; and where that config came from."""
    recorded = study.user_attrs.get(StudyAttr.CONFIG, {}).get("data")
    use_study = cfg.ensemble.data_from == "study" and recorded
    data_cfg = recorded if use_study else OmegaConf.to_container(cfg.data, resolve=True)
    return data_cfg, f"study {study.study_name!r} config.data" if use_study else "data"


def _datamodule(cfg: DictConfig, study: optuna.Study) -> pl.LightningDataModule:
    """The data module of `_data_config`, its files prepared."""
    data_cfg, where = _data_config(cfg, study)
    try:
        datamodule = safe_instantiate(data_cfg, allow_targets(cfg), where=where)
    except UntrustedTargetError:
        raise
    except Exception as err:
        raise ConfigError(f"data: {err}") from None
    check_data(datamodule)  # the recorded data folder may be gone: one line, exit 2
    return datamodule


def study_location(cfg: DictConfig) -> tuple[str, str | None]:
    """Storage URL and study name: `ensemble.*` when set, else the shared `search.*` keys."""
    storage = cfg.ensemble.storage or OmegaConf.select(cfg, "search.storage") or DEFAULT_STORAGE
    name = cfg.ensemble.study_name or OmegaConf.select(cfg, "search.study_name")
    return storage, name


def run_ensemble(cfg: DictConfig) -> EnsembleResult:
    """The whole command; returns what it produced (printed by `print_ensemble_result`)."""
    options = cfg.ensemble
    _check_options(options)
    storage, name = study_location(cfg)
    study = open_study(storage, name)
    recorded = tracking_of(study)
    uri = recorded.uri or cfg.tracking.uri
    experiment = recorded.experiment or cfg.tracking.experiment
    datamodule = _datamodule(cfg, study)
    datamodule.setup("validate")
    output_dir = ensemble_folder(cfg.output_dir)
    selection = select_members(
        study, options.k, diversity=options.diversity, val_loader=datamodule.val_dataloader(),
        pool=options.pool or None, diversity_weight=options.diversity_weight,
        tracking_uri=uri, download_dir=output_dir / "downloads", allow=allow_targets(cfg),
        output_dir=cfg.output_dir,
    )  # fmt: skip
    members = selection.members
    ensemble = fit_ensemble(
        members, datamodule.val_dataloader(), options.weighting, combine=options.combine,
        temperature=options.temperature, greedy_rounds=options.greedy_rounds,
    )  # fmt: skip
    datamodule.setup("test")
    report = evaluate_ensemble(ensemble, datamodule.test_dataloader(), [m.name for m in members],
                               latency_batch=options.latency_batch)  # fmt: skip
    report.dense = _dense_reference(cfg, study)
    distilled = None
    if options.distill:  # after the ensemble's evaluation, which it does not change
        distilled = distill_members(ensemble, members, datamodule, options, seed=cfg.seed,
                                    allow=allow_targets(cfg))  # fmt: skip
    settings = {"study": study.study_name, "storage": storage, **_plain(options)}
    path = Path(options.output or ensemble_file(output_dir, study.study_name, options.weighting))
    evaluation = {"rows": report.rows, "ensemble": report.ensemble, "costs": report.costs}
    artifact = save_ensemble(path, ensemble, [m.model_config for m in members],
                             [m.summary() for m in members],
                             {**settings, "evaluation": evaluation})  # fmt: skip
    result = EnsembleResult(
        ensemble, members, report, selection.notes, artifact,
        tracking_uri=uri, weighting=options.weighting, distilled=distilled,
    )  # fmt: skip
    if options.log_mlflow:
        example = next(iter(datamodule.val_dataloader()))[0][:2]
        shared = _shared_metrics(ensemble, report, datamodule.val_dataloader())
        result.run_id, result.model_uri = log_ensemble(
            uri, experiment, artifact, ensemble, params=settings,
            metrics={**report.metrics(), **shared, **(distilled.metrics() if distilled else {})},
            members=[m.summary() for m in members], example=example,
            parent_run_id=recorded.parent_run_id,
            run_name=run_names.ensemble_run(options.weighting, len(members)),
            tags={"study": study.study_name}, data=_data_config(cfg, study)[0],
        )  # fmt: skip
    return result


def _dense_reference(cfg: DictConfig, study: optuna.Study) -> dict[str, Any]:
    """The study's dense model (its test accuracy), when the ensemble is tested on the data
    that model was tested on: otherwise the two numbers would not compare."""
    if _data_config(cfg, study)[1] == "data":
        return {}
    return dict(study.user_attrs.get(StudyAttr.DENSE_REFERENCE) or {})


def _shared_metrics(
    ensemble: WeightedEnsemble, report: EnsembleReport, val_loader: Iterable
) -> dict[str, float]:
    """The names every run shares (`lightning_prune.run_metrics`): the ensemble's val and
    test accuracy, and nonzero parameters, FLOPs and sparsity summed over its used members
    (weight > 0), so it sorts against single trials by what it costs in total."""
    log_probs, labels = collect_log_probs(list(ensemble.members), val_loader)
    val_acc = accuracy(combine_log_probs(log_probs, ensemble.weights, ensemble.combine), labels)
    used = [m for m, w in zip(ensemble.members, ensemble.weights, strict=True) if float(w) > 0]
    total = sum(nonzero_params(m)[1] for m in used)
    nonzero = report.costs["nonzero_params"]
    return {
        "val_acc": float(val_acc),
        "test_acc": float(report.ensemble["test_acc"]),
        "nonzero_params": float(nonzero),
        "flops": float(report.costs["flops"]),
        "sparsity": 1.0 - nonzero / max(total, 1),
    }


def _plain(options: DictConfig) -> dict[str, Any]:
    return {k: v for k, v in OmegaConf.to_container(options, resolve=True).items()
            if k not in ("storage", "study_name")}  # fmt: skip


def print_ensemble_result(result: EnsembleResult) -> None:
    """Notes, the table, and where the file and MLflow run are."""
    from lightning_prune.console import console

    for note in result.notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    title = (f"lightning-prune ensemble: top {len(result.members)}, {result.weighting} weights, "
             f"{result.ensemble.combine} average")  # fmt: skip
    table = report_table(result.report, title)
    if result.distilled:
        add_student_row(table, result.distilled)
    console.print(table)
    if result.artifact:
        console.print(f"Ensemble file: {result.artifact} (lightning_prune.ensembles.load_ensemble)")
    if result.run_id:
        where = f" at {result.tracking_uri}" if result.tracking_uri else ""
        console.print(f"Recorded: MLflow run {result.run_id}{where}; model {result.model_uri}")


__all__ = [
    "EnsembleResult",
    "SelectionError",
    "fit_ensemble",
    "print_ensemble_result",
    "run_ensemble",
    "study_location",
]
