"""Adaptivity of bench_dynamic's gated models: executed MACs per true class and per confidence
bin (a figure), and the channels each layer's gates drop most often (a markdown list)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from lightning_prune.data import CLASSES  # noqa: E402

CONFIDENCE_BINS = (0.0, 0.5, 0.7, 0.9, 0.99, 1.0001)


def _means(values: torch.Tensor, groups: torch.Tensor, count: int) -> list[float]:
    return [
        float(values[groups == g].mean()) if bool((groups == g).any()) else float("nan")
        for g in range(count)
    ]


def per_class(run) -> list[float]:
    return _means(run.per_input, run.labels, len(CLASSES))


def per_confidence(run) -> list[float]:
    edges = torch.tensor(CONFIDENCE_BINS[1:-1], dtype=run.confidence.dtype)
    return _means(run.per_input, torch.bucketize(run.confidence, edges, right=True), 5)


def write_figure(runs: dict[str, object], path: Path) -> None:
    """One line per gated model ("network, method, budget"): mean executed MACs fraction per
    true class (left) and per bin of the top softmax probability (right)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5), sharey=True)
    bins = [
        f"{a:.2f}-{min(b, 1):.2f}"
        for a, b in zip(CONFIDENCE_BINS, CONFIDENCE_BINS[1:], strict=False)
    ]
    for label, run in runs.items():
        left.plot(range(len(CLASSES)), per_class(run), marker="o", label=label)
        right.plot(range(len(bins)), per_confidence(run), marker="o", label=label)
    left.set_xticks(range(len(CLASSES)), CLASSES, rotation=35, ha="right")
    right.set_xticks(range(len(bins)), bins)
    left.set_title("executed MACs / dense, per true class")
    right.set_title("per confidence bin (top softmax probability)")
    left.set_ylabel("MACs fraction (gates included)")
    right.set_xlabel("confidence")
    right.legend(fontsize=7, loc="best")
    for axis in (left, right):
        axis.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def most_off(run, top: int = 5) -> list[str]:
    """Markdown lines: per gated layer, the `top` channels gated off on the most test inputs,
    and how many channels were off on every input / on for every input."""
    seen = len(run.labels)
    lines = []
    for name, counts in run.off.items():
        share = counts.double() / seen
        order = torch.argsort(share, descending=True, stable=True)[:top]
        listed = ", ".join(f"{int(c)} ({share[c]:.0%})" for c in order)
        always_off, always_on = int((share == 1).sum()), int((share == 0).sum())
        lines.append(
            f"- `{name}` ({len(counts)} channels; {always_off} off on every input, "
            f"{always_on} on for every input): {listed}"
        )
    return lines
