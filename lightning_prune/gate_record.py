"""What a `train` run with `dynamic=gated` records about its gates in MLflow.

At the run's last step (as `lightning_prune.run_metrics` places final values): the kept
fraction `dynamic/budget`, the mean executed MACs fraction of the validation inputs
`dynamic/macs_fraction` (counted by the batch-1 skipping path), its mean per class
`dynamic/macs_class_<k>`, and the artifact `dynamic_gates.json` with the same numbers and,
per gated layer, the channels gated off on the most inputs.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from mlflow import MlflowClient

from lightning_prune.dynamic.usage import GateUsage, measure_usage
from lightning_prune.run_metrics import final_metrics

ARTIFACT = "dynamic_gates.json"
TOP_CHANNELS = 10  # channels listed per layer in the artifact


def final_usage(gating: Any, model: pl.LightningModule, datamodule: Any) -> GateUsage | None:
    """The trained model's gate usage on up to `gating.measure_samples` validation inputs
    (None when the callback measures nothing, `measure_samples=0`)."""
    if gating.measure_samples == 0:
        return None
    return measure_usage(model, datamodule.val_dataloader(), gating.measure_samples)


def metric_values(gating: Any, usage: GateUsage | None) -> dict[str, float]:
    """`dynamic/*` metric names and values."""
    values = {"dynamic/budget": float(gating.current)}
    if usage is not None and usage.samples:
        values["dynamic/macs_fraction"] = usage.mean_fraction
        for label, fraction in usage.per_class().items():
            values[f"dynamic/macs_class_{label}"] = fraction
    return values


def summary(gating: Any, usage: GateUsage | None) -> dict[str, Any]:
    """The artifact's content (plain types; a checkpoint's `info["dynamic"]` holds it too)."""
    out: dict[str, Any] = {
        "budget": float(gating.current),
        "target_budget": gating.budget,
        "layers": [item.name for item in gating.layers],
    }
    if usage is not None and usage.samples:
        out.update(usage.summary(TOP_CHANNELS))
    return out


def record(client: MlflowClient, run_id: str, result: Any, datamodule: Any, step: int) -> None:
    """Measure the gates of `result` (a `TrainResult` whose `extra["dynamic"]` is the callback)
    and log the metrics and artifact to `run_id`; the summary goes to
    `result.extra["dynamic_summary"]` (saved with the model) and the usage to
    `result.extra["dynamic_usage"]` (printed)."""
    gating = result.extra["dynamic"]
    usage = final_usage(gating, result.model, datamodule)
    values = metric_values(gating, usage)
    client.log_batch(run_id, metrics=final_metrics(values, step, names=tuple(values)))
    result.extra["dynamic_summary"] = summary(gating, usage)
    result.extra["dynamic_usage"] = usage
    client.log_dict(run_id, result.extra["dynamic_summary"], ARTIFACT)
