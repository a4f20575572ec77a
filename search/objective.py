"""One trial: suggested recipe -> trial config -> fit with the reporter -> recorded result.

Returns the objective value(s) and leaves in the trial's user attributes what the
ensembles and the report read (`contract.TrialAttr`); the demand becomes Optuna
constraints (`trial.set_constraint`, feasible when every value <= 0).
"""

from __future__ import annotations

import signal
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from lightning_prune.search import space
from lightning_prune.search.contract import (
    CHECKPOINT_NAME,
    TrialAttr,
    repeated_recipe,
    study_root,
)
from lightning_prune.search.quota import TrialQuota
from lightning_prune.search.reporter import TrialReporter
from lightning_prune.search.retries import worker_id
from lightning_prune.search.runs import TrialRun
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torch import nn

from lightning_prune.checkpoint import save_model
from lightning_prune.train import build_components, fit_and_test

DEMANDS = ("min_sparsity", "max_nonzero_params", "max_flops", "max_latency_ms")


class SearchInterrupted(Exception):
    """Ctrl-C or SIGTERM stopped the running trial; the study stops after recording it."""


class StopRequest(threading.Event):
    """Set by the first Ctrl-C or SIGTERM (`signum` says which): trials stop at the next
    batch and are recorded; a scheduler's SIGTERM is then answered within its grace period."""

    signum: int | None = None

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "SIGINT"


class TrialFailed(Exception):
    """A trial that ran but cannot be scored; `reason` goes to Optuna and MLflow."""


class DuplicateRecipe(TrialFailed):
    """The sampled parameters equal an earlier trial's: failed before training, re-sampled."""

    def __init__(self, number: int) -> None:
        super().__init__(f"duplicate: the sampled parameters repeat trial {number}'s")
        self.number = number


@dataclass
class SearchContext:
    """What every trial of a study shares (picklable into worker processes)."""

    cfg: DictConfig
    params: list[space.Param]
    parent_run_id: str
    quota: TrialQuota
    stop_event: StopRequest = field(default_factory=StopRequest)

    @property
    def multi(self) -> bool:
        return self.cfg.search.objective == "pareto"

    def trial_dir(self, number: int) -> Path:
        root = study_root(self.cfg.output_dir, self.cfg.search.study_name)
        return (root / f"trial_{number}").resolve()


def _dense_stats(model: nn.Module) -> dict[str, Any]:
    weights = [p for p in model.parameters() if p.dim() > 1]
    total = sum(p.numel() for p in weights)
    nonzero = sum(int((p != 0).sum()) for p in weights)
    return {TrialAttr.SPARSITY: 1 - nonzero / max(total, 1), TrialAttr.NONZERO_PARAMS: nonzero,
            TrialAttr.FLOPS: None}  # fmt: skip


def model_stats(model: nn.Module, summary: dict[str, Any] | None) -> dict[str, Any]:
    """Sparsity, nonzero parameters and FLOPs (from the pruning summary when pruned)."""
    if not summary:
        return _dense_stats(model)
    return {TrialAttr.SPARSITY: summary.get("sparsity"),
            TrialAttr.NONZERO_PARAMS: summary.get("nonzero_params"),
            TrialAttr.FLOPS: summary.get("flops")}  # fmt: skip


def latency_ms(model: nn.Module) -> float:
    """Median CPU milliseconds for one image, one thread (the deployment-like case)."""
    from lightning_prune.export import measure_latency

    shape = tuple(model.example_input_array.shape[1:])
    return float(measure_latency(model, shape, batch_size=1, repeats=30)["median_ms"])


def deployed_latency_ms(model: nn.Module, granularity: str | None) -> float:
    """Latency of what would be deployed: a structurally pruned model is compacted first
    (its removed units cost nothing); unstructured and N:M masks keep dense shapes, so those
    models are timed as they are (zeros are multiplied like any other weight)."""
    if granularity in ("structured", "heads"):
        from lightning_prune.export import compact

        model = compact(model, model.example_input_array)
    return latency_ms(model)


def set_constraints(trial: optuna.Trial, demand: dict[str, Any], stats: dict[str, Any]) -> bool:
    """One constraint per stated demand, scaled to be comparable; True when feasible."""
    checks = {
        "min_sparsity": lambda d: d - stats[TrialAttr.SPARSITY],
        "max_nonzero_params": lambda d: (stats[TrialAttr.NONZERO_PARAMS] - d) / d,
        "max_flops": lambda d: (stats[TrialAttr.FLOPS] - d) / d,
        "max_latency_ms": lambda d: (stats[TrialAttr.LATENCY_MS] - d) / d,
    }
    feasible = True
    for key, bound in demand.items():
        if bound is None:
            continue
        needed = {"max_flops": TrialAttr.FLOPS, "max_latency_ms": TrialAttr.LATENCY_MS}.get(key)
        if needed and stats.get(needed) is None:
            raise TrialFailed(
                f"search.demand.{key} needs {needed}, which this run did not "
                "measure (FLOPs come from the pruning callback)"
            )
        violation = float(checks[key](float(bound)))
        trial.set_constraint(key, violation)
        feasible = feasible and violation <= 0
    return feasible


def _record(trial: optuna.Trial, values: dict[str, Any]) -> None:
    for key, value in values.items():
        trial.set_user_attr(key, value)


def gated_flops(model: nn.Module, summary: dict | None, gating: Any) -> dict[str, Any]:
    """With per-input gates, FLOPs mean the average executed: the measured fraction of
    MACs that ran (gates included, `DynamicGating.usage`) times the statically pruned
    model's FLOPs (its nonzero weights), or the dense FLOPs without static masks."""
    usage = getattr(gating, "usage", None)
    if usage is None or not usage.samples:
        raise TrialFailed("the gates' executed MACs were not measured (no validation ran, or "
                          "dynamic.measure_samples=0)")  # fmt: skip
    if summary and summary.get("flops") is not None:
        base = float(summary["flops"])
    else:
        from lightning_prune.pruning.stats import measure_macs

        example = model.example_input_array[:1]
        base = 2.0 * sum(measure_macs(model, example).values())
    fraction = float(usage.mean_fraction)
    return {TrialAttr.FLOPS: fraction * base, TrialAttr.MACS_FRACTION: fraction}


def _measure(
    ctx: SearchContext,
    model: nn.Module,
    summary: dict | None,
    granularity: str | None,
    gating: Any = None,
) -> dict[str, Any]:
    stats = model_stats(model, summary)
    if gating is not None:
        stats.update(gated_flops(model, summary, gating))
    demand = dict(ctx.cfg.search.demand or {})
    if demand.get("max_latency_ms") is not None or (
        ctx.multi and ctx.cfg.search.pareto_with == "latency"
    ):
        stats[TrialAttr.LATENCY_MS] = deployed_latency_ms(model, granularity)
    return stats


def _refuse_repeat(trial: optuna.Trial) -> None:
    """Belt and braces behind the per-trial sampler seeds: never train a recipe twice."""
    trials = trial.study.get_trials(deepcopy=False)
    earlier = repeated_recipe(trials, trial.number, trial.params)
    if earlier is not None:
        trial.set_user_attr(TrialAttr.DUPLICATE_OF, earlier.number)
        raise DuplicateRecipe(earlier.number)


def run_trial(trial: optuna.Trial, ctx: SearchContext) -> float | list[float]:
    """Train one recipe; raise TrialPruned, TrialFailed or SearchInterrupted, or return."""
    # Sampled `start=0` is a legitimate recipe: its per-trial warning is noise here.
    warnings.filterwarnings("ignore", message="AdaptivePruning: pruning started before")
    trial.set_user_attr(TrialAttr.WORKER, worker_id())
    chosen = space.suggest(trial, ctx.params)
    _refuse_repeat(trial)
    trial_cfg = space.apply_overrides(ctx.cfg, space.trial_overrides(ctx.params, chosen))
    run = TrialRun(ctx.cfg, ctx.parent_run_id, trial)
    trial.set_user_attr(TrialAttr.MLFLOW_RUN_ID, run.run_id)
    run.log_params({**chosen, "trial_number": trial.number})
    start = time.perf_counter()
    state, reason = "FAIL", ""
    metrics: dict[str, Any] = {}
    try:
        values = _fit(trial, ctx, trial_cfg, run, metrics)
        state = "COMPLETE"
        return values
    except optuna.TrialPruned:
        state = "PRUNED"
        raise
    except (SearchInterrupted, SIGTERMException) as err:  # Lightning stops on SIGTERM itself
        reason = f"interrupted ({ctx.stop_event.signal_name}): stopped before its end"
        _record(trial, {TrialAttr.FAIL_REASON: reason, TrialAttr.INTERRUPTED: True})
        raise SearchInterrupted() from err
    except Exception as err:  # the study goes on; the reason is kept on both sides
        reason = f"{type(err).__name__}: {err}"
        trial.set_user_attr(TrialAttr.FAIL_REASON, reason[:2000])
        raise TrialFailed(reason) from err
    finally:
        seconds = time.perf_counter() - start
        trial.set_user_attr(TrialAttr.DURATION_S, round(seconds, 3))
        run.finish(state, metrics, seconds, reason)


def _fit(
    trial: optuna.Trial,
    ctx: SearchContext,
    trial_cfg: DictConfig,
    run: TrialRun,
    metrics: dict[str, Any],
) -> float | list[float]:
    """Fit, measure, constrain; fills `metrics` in place (for MLflow, even when pruned)."""
    components = build_components(trial_cfg)
    pruning = components[2]
    search = ctx.cfg.search
    reporter = TrialReporter(
        trial,
        monitor="val_acc",
        pruning=pruning,
        enable_pruning=not ctx.multi and search.pruner.kind != "none",
        stop_event=ctx.stop_event,
        on_validation=run.log_point,
        min_sparsity=(search.demand or {}).get("min_sparsity"),
    )
    overrides = {
        "enable_progress_bar": bool(search.trial_progress_bar),
        "enable_model_summary": False,
    }
    result = fit_and_test(
        trial_cfg,
        callbacks=[reporter, run.curves()],
        trainer_overrides=overrides,
        test=False,
        components=components,
    )
    trial.set_user_attr(TrialAttr.EPOCHS, len(reporter.curve))
    if reporter.interrupted:
        raise SearchInterrupted()
    granularity = OmegaConf.select(trial_cfg, "pruning.granularity", default=None)
    stats = _measure(ctx, result.model, result.pruning, granularity if pruning else None,
                     result.extra.get("dynamic"))  # fmt: skip
    metrics.update({"val_acc": result.metrics.get("val_acc"), **stats})
    _record(trial, {**stats, TrialAttr.VAL_ACC: metrics["val_acc"]})
    feasible = set_constraints(trial, dict(search.demand or {}), stats)
    trial.set_user_attr(TrialAttr.FEASIBLE, feasible)
    if reporter.pruned_at is not None:
        trial.set_user_attr(TrialAttr.PRUNED_AT_STEP, reporter.pruned_at)
        trial.set_user_attr(TrialAttr.PRUNED_REASON, reporter.pruned_reason)
        raise optuna.TrialPruned(f"pruned at step {reporter.pruned_at}")
    val_acc = metrics["val_acc"]
    if val_acc is None:
        raise TrialFailed("no validation ran, so val_acc is unknown")
    trainer = result.extra["trainer"]
    tested = trainer.test(result.model, datamodule=components[0], verbose=False)
    metrics["test_acc"] = float(tested[0]["test_acc"]) if tested else None
    trial.set_user_attr(TrialAttr.TEST_ACC, metrics["test_acc"])
    info = {
        "metrics": {k: v for k, v in metrics.items() if v is not None},
        "trial": trial.number,
        "params": dict(trial.params),
        "feasible": feasible,
    }
    folder = ctx.trial_dir(trial.number)
    path = save_model(folder / CHECKPOINT_NAME, result.model, trial_cfg.model, info)
    # relative to the study's folder (`trial_dir`'s parent): a copied runs/ folder still opens
    trial.set_user_attr(TrialAttr.CHECKPOINT, path.resolve().relative_to(folder.parent).as_posix())
    run.log_artifact(str(path))
    if ctx.multi:
        second = stats[
            TrialAttr.SPARSITY if search.pareto_with == "sparsity" else TrialAttr.LATENCY_MS
        ]
        return [val_acc, second]
    return val_acc
