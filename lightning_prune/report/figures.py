"""The report's own figures, drawn from plain data so they do not depend on where it came from.

Optuna's importances and Pareto front are not redrawn here: the report takes them from
`lightning_prune.search.optuna_figures`. The history is drawn here: Optuna's leaves out the
trials the pruner stopped, and the report shows them grouped by why they were stopped.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def save(fig: plt.Figure, path: Path) -> Path:
    """Write the figure as PNG and close it."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def drawn_trials(points: list[dict]) -> str:
    """What a sparsity figure shows, for its title: "feasible trials" when only those are
    drawn, so a reader does not take the missing infeasible ones for absent data."""
    kinds = {bool(p["feasible"]) for p in points}
    if kinds == {True}:
        return f"{len(points)} feasible trials"
    if kinds == {False}:
        return f"{len(points)} infeasible trials (none feasible)"
    return f"{len(points)} complete trials, feasible and infeasible"


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points (sparsity, accuracy) not dominated when both are maximised, by sparsity."""
    front = [p for p in points if not any(q[0] >= p[0] and q[1] >= p[1] and q != p for q in points)]
    return sorted(set(front))


def accuracy_vs_sparsity(
    points: list[dict], dense_acc: float | None, path: Path, metric: str = "val_acc"
) -> Path:
    """`sparsity_figure`, saved."""
    return save(sparsity_figure(points, dense_acc, metric), path)


def sparsity_figure(points: list[dict], dense_acc: float | None, metric: str = "val_acc"):
    """Every complete trial, feasible or not, with the Pareto front and the dense line; the
    title names which of them are drawn."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for feasible, colour, label in ((True, "tab:blue", "feasible"), (False, "0.6", "infeasible")):
        chosen = [p for p in points if p["feasible"] == feasible]
        if chosen:
            ax.scatter([100 * p["sparsity"] for p in chosen],
                       [100 * p["acc"] for p in chosen], c=colour, label=f"trial ({label})",
                       s=28, zorder=2)  # fmt: skip
    front = pareto_front([(p["sparsity"], p["acc"]) for p in points])
    if front:
        ax.step([100 * s for s, _ in front], [100 * a for _, a in front], where="post",
                c="tab:green", lw=2, label="Pareto front", zorder=3)  # fmt: skip
    if dense_acc is not None:
        ax.axhline(100 * dense_acc, c="k", ls="--", lw=1, label=f"dense ({100 * dense_acc:.2f}%)")
    ax.set_xlabel("sparsity of prunable weights (%)")
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(f"Accuracy vs sparsity: {drawn_trials(points)}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    return fig


# How each way a trial ended is drawn; stopped kinds take STOPPED_COLOURS in order of appearance.
GROUP_STYLE = {
    "complete": {"c": "tab:blue", "marker": "o"},
    "complete (infeasible)": {"c": "0.6", "marker": "o"},
    "failed": {"c": "tab:red", "marker": "x"},
}
STOPPED_COLOURS = ("tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")


def history_figure(points: list[dict], metric: str = "val_acc") -> plt.Figure:
    """Each trial's value by trial number, one legend entry per way it ended (stopped trials
    by the kind of reason, e.g. "stopped: cannot beat best"), with the best feasible so far.

    `points`: {"number", "value", "group"} dicts; `group` is "complete", "complete
    (infeasible)", "failed" or "stopped: <kind>". A non-finite value (diverged) is drawn at
    the lowest finite one, so its trial still shows."""
    fig, ax = plt.subplots(figsize=(10, 5))
    finite = [p["value"] for p in points if math.isfinite(p["value"])]
    floor = min(finite, default=0.0)
    groups = {p["group"] for p in points}
    order = [g for g in GROUP_STYLE if g in groups] + sorted(groups - set(GROUP_STYLE))
    colours = itertools.cycle(STOPPED_COLOURS)
    for group in order:
        style = GROUP_STYLE.get(group) or {"c": next(colours), "marker": "v"}
        chosen = [p for p in points if p["group"] == group]
        ys = [100 * (p["value"] if math.isfinite(p["value"]) else floor) for p in chosen]
        ax.scatter([p["number"] for p in chosen], ys, label=group, s=30, zorder=3, **style)
    best = sorted((p["number"], p["value"]) for p in points
                  if p["group"] == "complete" and math.isfinite(p["value"]))  # fmt: skip
    if best:
        xs, ys = [], []
        for number, value in best:
            xs.append(number)
            ys.append(max([100 * value, *ys[-1:]]))
        xs.append(max(p["number"] for p in points))
        ys.append(ys[-1])
        ax.step(xs, ys, where="post", c="tab:green", lw=1.5, label="best feasible so far")
    ax.set_xlabel("trial")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # trial numbers: no 2.5
    ax.set_ylabel(f"{metric} (%; stopped, failed: last reported)")
    ax.set_title("Study history: every trial, stopped ones by why")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)  # outside: hides no point
    return fig


def study_history(points: list[dict], path: Path, metric: str = "val_acc") -> Path:
    """`history_figure`, saved."""
    return save(history_figure(points, metric), path)


def layer_sparsity(layers: dict[str, float], path: Path, title: str) -> Path:
    """Per-layer sparsity bars: where the search put the zeros."""
    fig, ax = plt.subplots(figsize=(6.4, 0.5 * len(layers) + 1.6))
    names = list(layers)
    values = [100 * layers[n] for n in names]
    bars = ax.barh(names, values, color="tab:purple")
    ax.bar_label(bars, labels=[f"{v:.1f}%" for v in values], padding=3, fontsize=8)
    ax.set_xlim(0, 110)
    ax.invert_yaxis()
    ax.set_xlabel("sparsity (% of the layer's weights that are zero)")
    ax.set_title(title)
    return save(fig, path)


def accuracy_baseline(values: list[float], step: float = 5.0) -> float:
    """Where the accuracy axis starts: the round `step` below the lowest bar, at least one
    point under it. Starting at 0 hides differences of a point; starting just under the
    lowest bar makes a 1-point gap look like a 10x one. The axis label says where it starts."""
    return max(0.0, step * math.floor((min(values) - 1.0) / step))


def bar_label(row: dict) -> str:
    """Accuracy, the member's weight in the ensemble (unused at 0) and its size."""
    text = f"{100 * row['test_acc']:.2f}%"
    if row.get("weight") is not None:
        text += f"  weight {row['weight']:.2f}" + (" (unused)" if row["weight"] <= 0 else "")
    return f"{text}  {row['nonzero']:,} nonzero"


def ensemble_comparison(rows: list[dict], path: Path) -> Path:
    """`ensemble_figure`, saved."""
    return save(ensemble_figure(rows), path)


def ensemble_figure(rows: list[dict]) -> plt.Figure:
    """Test accuracy of the ensemble, each member (with its weight) and the dense model, with
    their nonzero parameters, from a round baseline named on the axis."""
    fig, ax = plt.subplots(figsize=(7.2, 0.5 * len(rows) + 1.8))
    colours = {"ensemble": "tab:green", "member": "tab:blue", "dense": "0.4"}
    names = [r["name"] for r in rows]
    values = [100 * r["test_acc"] for r in rows]
    base = accuracy_baseline(values)
    bars = ax.barh(names, [v - base for v in values], left=base,
                   color=[colours.get(r["kind"], "tab:blue") for r in rows])  # fmt: skip
    ax.bar_label(bars, labels=[bar_label(r) for r in rows], padding=3, fontsize=8)
    top = max(values)
    ax.set_xlim(base, top + (top - base) * 0.9)  # room for the labels right of the bars
    ax.invert_yaxis()
    ax.set_xlabel(f"test accuracy (%; axis starts at {base:g}%)")
    ax.set_title("Test accuracy: ensemble, weighted members, one dense model")
    return fig
