"""The metric names every MLflow run shares, and the one rule for where final values go.

Shared names, on trial, train, dense-reference, ensemble and study runs alike, so one MLflow
table sorts them all together: `val_acc`, `test_acc`, `sparsity`, `nonzero_params`, `flops`.
(The pruning callback also logs `pruning/sparsity`, `pruning/nonzero`, ... while it trains: a
Lightning logger convention kept beside these.)

The rule: every point is logged at the step it was measured at. Curves (`train_loss`,
`val_loss`, `val_acc`, `sparsity`, ...) are logged at the trainer's global step of each
validation, so a chart starts at the first validation. A run's final values are logged once
more, under the same plain names, at the run's last step (the global step its training ended
at), never at step 0, and after the curve's last point: MLflow's run table shows a metric's
latest point, so the table shows the final value and no chart starts at it. Runs that train
nothing have no curve: a study parent logs at step = its number of finished trials (each
search that resumes the study adds a point: the best so far), an ensemble at step 0.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from mlflow.entities import Metric
from torch import nn

from lightning_prune.pruning import stats

SHARED = ("val_acc", "test_acc", "sparsity", "nonzero_params", "flops")


def final_metrics(
    values: Mapping[str, Any], step: int, after_ms: int = 0, names: tuple[str, ...] = SHARED
) -> list[Metric]:
    """Metrics for the `names` in `values` that are known (not None), all at `step`, stamped
    later than `after_ms` (the curve's last point) so they are MLflow's latest value."""
    now = max(int(time.time() * 1000), after_ms + 1)
    return [Metric(name, float(values[name]), now, int(step))
            for name in names if values.get(name) is not None]  # fmt: skip


def _dense_flops(model: nn.Module) -> float | None:
    example = getattr(model, "example_input_array", None)
    if example is None:
        return None
    try:
        return stats.flops(stats.measure_macs(model, example), {})[1]
    except Exception:  # a model whose forward the trace cannot follow: no estimate
        return None


def model_stats(model: nn.Module, summary: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`sparsity`, `nonzero_params`, `flops` of a trained model: from the pruning callback's
    summary when it pruned, else measured (zero weights among matrices and kernels, nonzero
    parameters, dense FLOPs)."""
    if summary:
        return {key: summary.get(key) for key in ("sparsity", "nonzero_params", "flops")}
    weights = [p.detach() for p in model.parameters() if p.dim() > 1]
    total = sum(p.numel() for p in weights)
    zeros = sum(int((p == 0).sum()) for p in weights)
    return {
        "sparsity": zeros / max(total, 1),
        "nonzero_params": stats.nonzero_params(model)[0],
        "flops": _dense_flops(model),
    }
