"""One training run from a composed config: build, fit, test, save, record in MLflow."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from lightning_prune import gate_record as gates
from lightning_prune import provenance, run_metrics, run_names, tracking
from lightning_prune.checkpoint import save_model
from lightning_prune.config import ConfigError
from lightning_prune.preflight import check_data, check_folder, check_tracking, check_trainer
from lightning_prune.targets import allow_targets, safe_instantiate


@dataclass
class TrainResult:
    """What a run produced: metrics, the trained module, and where it was recorded."""

    metrics: dict[str, float]
    model: pl.LightningModule
    pruning: dict[str, Any] | None = None
    run_id: str | None = None
    checkpoint: Path | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def _build(cfg: DictConfig, group: str) -> Any:
    try:
        return safe_instantiate(cfg[group], allow_targets(cfg), where="")
    except InstantiationException as err:
        cause = err.__cause__ or err
        raise ConfigError(f"{group}: {cause}") from None
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{group}: {err}") from None


def build_model(cfg: DictConfig) -> pl.LightningModule:
    """The configured model alone (what a search needs to know before any training)."""
    return _build(cfg, "model")


def build_data(cfg: DictConfig) -> pl.LightningDataModule:
    """The configured data module alone (a search checks its files before the first trial)."""
    return _build(cfg, "data")


LIGHTNING_TARGETS = ("pytorch_lightning.callbacks.*", "pytorch_lightning.loggers.*",
                     "lightning.pytorch.callbacks.*", "lightning.pytorch.loggers.*")  # fmt: skip


def build_extras(cfg: DictConfig, group: str) -> list[Any]:
    """The `callbacks` or `logger` group: named `_target_` entries (as in
    lightning-hydra-template), Lightning's own allowed besides `allow_targets`."""
    entries = cfg.get(group) or {}
    allow = [*allow_targets(cfg), *LIGHTNING_TARGETS]
    built = []
    for name, entry in entries.items():
        if not isinstance(entry, DictConfig) or "_target_" not in entry:
            raise ConfigError(f"{group}.{name} needs a _target_ (e.g. callbacks=early_stopping)")
        try:
            built.append(safe_instantiate(entry, allow, where=f"{group}.{name}"))
        except InstantiationException as err:
            raise ConfigError(f"{group}.{name}: {err.__cause__ or err}") from None
        except (ValueError, TypeError, ModuleNotFoundError) as err:
            raise ConfigError(f"{group}.{name}: {err}") from None
    return built


def build_dynamic(cfg: DictConfig) -> Any:
    """The `dynamic` group's `DynamicGating` callback, or None (`dynamic=none`)."""
    return _build(cfg, "dynamic") if cfg.get("dynamic") and "_target_" in cfg.dynamic else None


def check_dynamic(cfg: DictConfig, model: pl.LightningModule) -> None:
    """The gating options and the layers they pick on this model (the callback itself checks
    the layers only in `setup`): a bad choice fails here, naming the option or layer."""
    gating = build_dynamic(cfg)
    if gating is None:
        return
    from lightning_prune.dynamic.gates import GatingError, find_layers

    try:
        find_layers(model, gating.include)
    except GatingError as err:
        raise ConfigError(f"dynamic: {err}") from None


def check_pruning(cfg: DictConfig, pruning: Any, model: pl.LightningModule) -> None:
    """What the callback checks at the start of `fit` (the weights it selects, the granularity
    on each of them, a known training length), here, before anything is recorded."""
    if pruning is None:
        return
    try:
        pruning.check_model(model)
    except ValueError as err:
        raise ConfigError(f"pruning: {err}") from None
    epochs, steps = cfg.trainer.get("max_epochs"), cfg.trainer.get("max_steps", -1)
    if epochs == -1 and steps in (None, -1) and pruning.total_steps is None:
        raise ConfigError(
            "pruning needs the length of training to place its sparsity ramp, and "
            "trainer.max_epochs=-1 with no trainer.max_steps gives none: set trainer.max_steps, "
            "a trainer.max_epochs >= 1, or pruning.total_steps"
        )


def build_components(cfg: DictConfig) -> tuple[pl.LightningDataModule, pl.LightningModule, Any]:
    """Seed, then instantiate data, model and (when configured) the pruning callback; the
    gating options (`dynamic`) are checked here too, and built again by `fit_and_test`.

    Every constructor validates its arguments, so bad values fail here, before training,
    with an error that names the config group.
    """
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = _build(cfg, "data")
    model = _build(cfg, "model")
    pruning = _build(cfg, "pruning") if cfg.get("pruning") and "_target_" in cfg.pruning else None
    check_pruning(cfg, pruning, model)
    check_dynamic(cfg, model)
    return datamodule, model, pruning


def _trainer_kwargs(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg.trainer, resolve=True)


def _fit(trainer: pl.Trainer, model: Any, datamodule: Any, pruning: Any) -> None:
    """`trainer.fit`, with the callback's per-layer table printed once fit has returned: the
    callback prints it from `on_fit_end`, which runs while a RichProgressBar is still live
    (that bar stops in `teardown`), so the table would land inside the bar's display."""
    verbose = bool(getattr(pruning, "verbose", False))
    if verbose:
        pruning.verbose = False
    try:
        trainer.fit(model, datamodule=datamodule)
    except SystemExit as stop:  # Lightning answers Ctrl-C with a bare exit(1)
        if type(stop) is SystemExit and getattr(trainer, "interrupted", False):
            raise KeyboardInterrupt from None
        raise
    finally:
        if verbose:
            pruning.verbose = True
    finished = not getattr(trainer, "interrupted", False)  # as on_fit_end: not on Ctrl-C
    if verbose and finished and trainer.is_global_zero and pruning.masks:
        from lightning_prune.pruning.stats import render_summary

        shapes = {name: tuple(mask.shape) for name, mask in pruning.masks.items()}
        render_summary(pruning.summary(), shapes)


def fit_and_test(
    cfg: DictConfig,
    *,
    callbacks: list[pl.Callback] | tuple = (),
    logger: Any = False,
    trainer_overrides: dict[str, Any] | None = None,
    test: bool = True,
    components: tuple | None = None,
) -> TrainResult:
    """Fit, then test; `components` are the output of `build_components` (built if None).
    The pruning callback runs first and the gating one (`dynamic`) after it: static masks
    first, gates on top."""
    datamodule, model, pruning = components or build_components(cfg)
    gating = build_dynamic(cfg)
    all_callbacks = [*([pruning] if pruning else []), *([gating] if gating else []), *callbacks]
    kwargs = {**_trainer_kwargs(cfg), **(trainer_overrides or {})}
    try:
        trainer = pl.Trainer(**kwargs, callbacks=all_callbacks, logger=logger)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"trainer: {err}") from None
    start = time.perf_counter()
    _fit(trainer, model, datamodule, pruning)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    if test and not getattr(trainer, "interrupted", False):
        tested = trainer.test(model, datamodule=datamodule, verbose=False)
        metrics.update({k: float(v) for k, v in (tested[0] if tested else {}).items()})
    summary = pruning.summary() if pruning is not None else None
    return TrainResult(
        metrics=metrics,
        model=model,
        pruning=summary,
        seconds=time.perf_counter() - start,
        extra={"trainer": trainer, "dynamic": gating},
    )


def _plain(value: Any) -> Any:
    return value if isinstance(value, int | float | str | bool) or value is None else str(value)


def save_result(cfg: DictConfig, result: TrainResult, folder: Path) -> Path:
    """Save the final model as plain tensors plus the info a later loader needs."""
    info = {"metrics": result.metrics, "seconds": result.seconds}
    if result.pruning:
        info["pruning"] = {k: _plain(v) for k, v in result.pruning.items() if k != "events"}
    if result.extra.get("dynamic_summary"):
        info["dynamic"] = result.extra["dynamic_summary"]
    return save_model(folder / "model.pt", result.model, cfg.model, info)


def preflight(cfg: DictConfig, datamodule: pl.LightningDataModule) -> None:
    """What a run needs besides valid options: accelerator, writable output, readable data,
    tracking store. Checked before the run is opened, not after it trained."""
    check_trainer(cfg.trainer)
    check_folder(Path(cfg.output_dir) / "models", "output_dir")
    check_data(datamodule)
    check_tracking(cfg.tracking.uri)  # last: it creates the folder of a local store


def run_train(cfg: DictConfig) -> TrainResult:
    """The `train` command: a fit and test recorded as one MLflow run with its model, named
    `train-<preset>` (or `run_name`), the shared final metrics at its last step
    (`lightning_prune.run_metrics`) and its provenance; with `dynamic=gated`, also what the
    gates did (`lightning_prune.gate_record`)."""
    uri, experiment = cfg.tracking.uri, cfg.tracking.experiment
    components = build_components(cfg)  # bad input fails before anything is recorded
    callbacks, loggers = build_extras(cfg, "callbacks"), build_extras(cfg, "logger")
    preflight(cfg, components[0])
    name = run_names.train_run(cfg)
    run_id = tracking.start_run(uri, experiment, run_name=name, tags={"job": "train"})
    logger = tracking.lightning_logger(uri, experiment, run_id)
    logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    status = "FAILED"
    try:
        provenance.stamp(uri, run_id, "train", cfg.data)
        saves = any(isinstance(c, pl.callbacks.ModelCheckpoint) for c in callbacks)
        result = fit_and_test(
            cfg, callbacks=callbacks, logger=[logger, *loggers], components=components,
            trainer_overrides={"enable_checkpointing": True} if saves else None,
        )  # fmt: skip
        result.run_id = run_id
        values = {**result.metrics, **run_metrics.model_stats(result.model, result.pruning)}
        step = result.extra["trainer"].global_step
        logger.experiment.log_batch(run_id, metrics=run_metrics.final_metrics(values, step))
        if result.extra.get("dynamic") is not None:
            gates.record(logger.experiment, run_id, result, components[0], step)
        result.checkpoint = save_result(cfg, result, Path(cfg.output_dir) / "models" / run_id)
        logger.experiment.log_artifact(run_id, str(result.checkpoint))
        status = "FINISHED"
        return result
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        logger.experiment.set_terminated(run_id, status)
