"""What pruning bought: sparsity per layer, nonzero parameters, and a FLOPs estimate.

FLOPs are 2 x multiply-accumulates of the prunable weights in one forward, counted by
`trace.ForwardTrace` (FlopCounterMode for Linear and Conv layers, shape formulas for attention
and RNN weights). Only the density scaling is ours: a pruned weight's FLOPs scale with its
density (the ideal sparse kernel); a structurally compacted model is counted as it is. Other
work (bias adds, BN, pooling, activations, attention scores) is not counted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from lightning_prune.pruning.masks import MaskStore
from lightning_prune.pruning.selection import select_params
from lightning_prune.pruning.trace import ForwardTrace


def layer_sparsity(masks: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Fraction of pruned weights per parameter name."""
    return {n: 1.0 - float(m.sum()) / max(1, m.numel()) for n, m in masks.items()}


def nonzero_params(model: nn.Module) -> tuple[int, int]:
    """(nonzero, total) over every parameter of the model."""
    nonzero = total = 0
    for p in model.parameters():
        nonzero += int(torch.count_nonzero(p.detach()))
        total += p.numel()
    return nonzero, total


@torch.no_grad()
def measure_macs(model: nn.Module, example: Any) -> dict[str, int]:
    """Dense MACs per prunable weight (keyed by parameter name) for one example."""
    trace = ForwardTrace(select_params(model, ("*",), ()))
    was_training = model.training
    model.eval()
    try:
        if isinstance(example, Mapping):
            model(**example)
        elif isinstance(example, list | tuple):
            model(*example)
        else:
            model(example)
    finally:
        trace.remove()
        model.train(was_training)
    return dict(trace.macs)


def flops(macs: Mapping[str, int], densities: Mapping[str, float]) -> tuple[float, float]:
    """(sparse, dense) FLOPs: 2 x MACs, pruned layers scaled by their density."""
    dense = 2.0 * sum(macs.values())
    sparse = 2.0 * sum(m * densities.get(name, 1.0) for name, m in macs.items())
    return sparse, dense


def build_summary(
    store: MaskStore,
    model: nn.Module,
    macs: Mapping[str, int] | None,
    target: float,
    events: list[dict[str, Any]],
    covered: float = 1.0,
) -> dict[str, Any]:
    """Sparsity, target, nonzero/total params, FLOPs (sparse, dense), per-layer, events,
    `coverage`: the fraction of the model's parameters the masks cover, and `dense_layers`: the
    weights the granularity never prunes (granularity "heads": all but attention), which
    `sparsity` leaves out."""
    per_layer = layer_sparsity(store.masks)
    nonzero, total = nonzero_params(model)
    sparse_flops, dense_flops = flops(macs or {}, {n: 1.0 - s for n, s in per_layer.items()})
    return {
        "sparsity": store.sparsity(),
        "target": target,
        "nonzero_params": nonzero,
        "total_params": total,
        "flops": sparse_flops,
        "dense_flops": dense_flops,
        "layer_sparsity": per_layer,
        "events": events,
        "coverage": covered,
        "dense_layers": sorted(store.dense),
    }


def logged_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """The summary as `pruning/...` metrics for the Trainer's loggers."""
    metrics = {
        "pruning/sparsity": summary["sparsity"],
        "pruning/target": summary["target"],
        "pruning/nonzero": float(summary["nonzero_params"]),
        "pruning/flops": summary["flops"],
    }
    for name, value in summary["layer_sparsity"].items():
        metrics[f"pruning/sparsity/{name}"] = value
    return metrics


def render_summary(
    summary: Mapping[str, Any], shapes: Mapping[str, Sequence[int]], console: Any = None
) -> None:
    """Print the fit-end report: a per-layer table and the controller's decisions;
    `console`: a live Rich progress bar's, so the table prints above the bar, not into it."""
    from lightning_prune.pruning.plain_output import console_and_table

    default, Table = console_and_table()
    console = console or default
    table = Table(title="AdaptivePruning: per-layer sparsity")
    for column in ("layer", "shape", "weights", "kept", "sparsity"):
        table.add_column(column, justify="left" if column in ("layer", "shape") else "right")
    for name, sparsity in summary["layer_sparsity"].items():
        shape = tuple(shapes.get(name, ()))
        count = int(torch.Size(shape).numel()) if shape else 0
        kept = round(count * (1.0 - sparsity))
        table.add_row(name, str(shape), f"{count:,}", f"{kept:,}", f"{sparsity:.2%}")
    table.add_section()
    dense = set(summary.get("dense_layers", ()))  # not counted in summary["sparsity"]
    total = sum(
        int(torch.Size(tuple(shape)).numel()) for name, shape in shapes.items() if name not in dense
    )
    kept_total = round(total * (1.0 - summary["sparsity"]))
    table.add_row(
        "all pruned layers", "", f"{total:,}", f"{kept_total:,}", f"{summary['sparsity']:.2%}"
    )
    console.print(table)
    dense = summary["dense_flops"]
    ratio = f"{dense / summary['flops']:.1f}x" if summary["flops"] else "n/a"
    console.print(
        f"target sparsity {summary['target']:.2%}; nonzero params "
        f"{summary['nonzero_params']:,} / {summary['total_params']:,}; "
        f"FLOPs {summary['flops']:,.0f} / {dense:,.0f} dense ({ratio} fewer); masks cover "
        f"{summary.get('coverage', 1.0):.1%} of the model's parameters"
    )
    if summary["events"]:
        events = Table(title="AdaptivePruning: controller decisions")
        for column in ("step", "event", "metric", "target"):
            events.add_column(column, justify="right")
        for e in summary["events"]:
            events.add_row(str(e["step"]), e["kind"], f"{e['metric']:.4f}", f"{e['target']:.4f}")
        console.print(events)
