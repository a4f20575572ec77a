"""Test-time comparison: the ensemble vs each member vs one dense model, as a rich table.

Costs are counted from the weights themselves (nonzeros, sparse FLOPs), so they hold
for any member architecture and need no trial attributes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from lightning_prune.ensembles.model import WeightedEnsemble, combine_log_probs
from lightning_prune.ensembles.predictions import accuracy, collect_log_probs, nll
from rich.table import Table
from torch import nn

from lightning_prune.export import measure_latency
from lightning_prune.pruning import stats


def nonzero_params(model: nn.Module) -> int:
    """Parameters that are exactly nonzero (pruned weights are stored as zeros)."""
    return stats.nonzero_params(model)[0]


def total_params(model: nn.Module) -> int:
    """All parameters of the model, zero or not: the dense size."""
    return stats.nonzero_params(model)[1]


@torch.inference_mode()
def count_flops(model: nn.Module, example: torch.Tensor, sparse: bool = True) -> int:
    """FLOPs per sample of Linear and Conv layers (2 x multiply-accumulates).

    With `sparse`, only nonzero weights count: the work a sparse kernel would do.
    """
    macs = stats.measure_macs(model, example[:1])
    weights = dict(model.named_parameters())
    densities = {
        name: float(torch.count_nonzero(weights[name])) / weights[name].numel() for name in macs
    }
    sparse_flops, dense_flops = stats.flops(macs, densities)
    return int(round(sparse_flops if sparse else dense_flops))


@dataclass
class EnsembleReport:
    """Test metrics of the ensemble and its members, and costs against one dense model."""

    rows: list[dict[str, Any]]
    ensemble: dict[str, Any]
    best_member: dict[str, Any]
    costs: dict[str, float]
    notes: list[str] = field(default_factory=list)
    dense: dict[str, Any] = field(default_factory=dict)  # the study's dense reference, if any

    def metrics(self) -> dict[str, float]:
        """Flat numeric metrics for MLflow."""
        out = {f"ensemble_{k}": float(v) for k, v in self.ensemble.items() if k != "name"}
        out |= {f"best_member_{k}": float(self.best_member[k]) for k in ("test_acc", "test_nll")}
        return out | {k: float(v) for k, v in self.costs.items()}


def evaluate_ensemble(
    ensemble: WeightedEnsemble,
    test_loader: Iterable,
    names: Sequence[str],
    *,
    latency_batch: int = 256,
    latency_repeats: int = 20,
) -> EnsembleReport:
    """Test accuracy and NLL of ensemble and members; nonzeros, FLOPs and latency."""
    members = list(ensemble.members)
    log_probs, labels = collect_log_probs(members, test_loader, names)
    combined = combine_log_probs(log_probs, ensemble.weights, ensemble.combine)
    acc, loss = accuracy(log_probs, labels), nll(log_probs, labels)
    rows = [
        {"name": name, "weight": float(w), "test_acc": float(a), "test_nll": float(n),
         "nonzero_params": nonzero_params(m)}
        for name, w, a, n, m in zip(names, ensemble.weights, acc, loss, members, strict=True)
    ]  # fmt: skip
    best = max(rows, key=lambda r: r["test_acc"])
    example = next(iter(test_loader))[0][:1]
    dense_params, dense_flops = total_params(members[0]), count_flops(members[0], example, False)
    used = [m for m, w in zip(members, ensemble.weights, strict=True) if float(w) > 0]
    costs = {
        "nonzero_params": sum(nonzero_params(m) for m in used),
        "dense_params": dense_params,
        "flops": sum(count_flops(m, example) for m in used),
        "dense_flops": dense_flops,
    }
    costs["params_vs_dense"] = costs["nonzero_params"] / dense_params
    costs["flops_vs_dense"] = costs["flops"] / max(dense_flops, 1)
    shape = tuple(example.shape[1:])
    costs["latency_batch"] = latency_batch
    for key, model in (("latency_ms", ensemble), ("dense_latency_ms", members[0])):
        timing = measure_latency(model, shape, latency_batch, latency_repeats, threads=1)
        costs[key] = timing["median_ms"]
    summary = {"name": "ensemble", "test_acc": float(accuracy(combined, labels)),
               "test_nll": float(nll(combined, labels))}  # fmt: skip
    return EnsembleReport(rows=rows, ensemble=summary, best_member=best, costs=costs)


def report_table(report: EnsembleReport, title: str = "lightning-prune ensemble") -> Table:
    """Members, ensemble, best member and one dense model (on test) with accuracy, NLL,
    weight and size: the dense row is the bar the ensemble is judged against."""
    table = Table(title=title, header_style="bold")
    table.add_column("model", overflow="fold")
    for column in ("weight", "test acc", "test NLL", "nonzero params"):
        table.add_column(column, justify="right", no_wrap=True)
    for row in report.rows:
        table.add_row(row["name"], f"{row['weight']:.3f}", f"{row['test_acc']:.4f}",
                      f"{row['test_nll']:.4f}", f"{row['nonzero_params']:,}")  # fmt: skip
    table.add_section()
    best = report.best_member
    table.add_row(f"best member: {best['name']}", "", f"{best['test_acc']:.4f}",
                  f"{best['test_nll']:.4f}", f"{best['nonzero_params']:,}")  # fmt: skip
    c = report.costs
    ens = report.ensemble
    table.add_row("[bold]ensemble[/bold]", "1.000", f"[bold]{ens['test_acc']:.4f}",
                  f"{ens['test_nll']:.4f}", f"{int(c['nonzero_params']):,}")  # fmt: skip
    dense_acc = report.dense.get("test_acc")
    table.add_row("one dense model", "", "-" if dense_acc is None else f"{dense_acc:.4f}", "-",
                  f"{int(c['dense_params']):,}")  # fmt: skip
    table.caption = (
        f"ensemble: {c['params_vs_dense']:.1%} of one dense model's parameters, "
        f"{c['flops_vs_dense']:.1%} of its FLOPs ({int(c['flops']):,} vs "
        f"{int(c['dense_flops']):,} per sample); CPU latency at batch "
        f"{c['latency_batch']:.0f}, 1 thread: {c['latency_ms']:.1f} ms "
        f"(one dense member {c['dense_latency_ms']:.1f} ms)"
    )
    return table
