"""The peers figure, drawn from the markdown table bench_peers.py writes, so the figure and
the table cannot disagree and a committed table can be redrawn without rerunning it.

    .venv/bin/python benchmarks/peers_figure.py benchmarks/results/peers_full.md [...]
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

CELL = re.compile(r"([\d.]+) \[([\d.]+)-([\d.]+)\]")  # "88.62 [88.20-88.81]": median [min-max]

# {method: {target sparsity (%): (median, min, max) test accuracy (%)}}
Summary = dict[str, dict[float, tuple[float, float, float]]]


def read_table(text: str) -> tuple[str, Summary]:
    """The settings line and the accuracy cells of a peers table."""
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| method |"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    sparsities = [float(c.rstrip(" %")) for c in columns[1:] if c.endswith("%")]
    summary: Summary = {}
    for line in lines[lines.index(header) + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        values = [CELL.fullmatch(c) for c in cells[1 : 1 + len(sparsities)]]
        summary[cells[0]] = {s: tuple(float(x) for x in m.groups())
                             for s, m in zip(sparsities, values, strict=True) if m}  # fmt: skip
    return lines[0], summary


def seeds_of(settings: str) -> int:
    found = re.search(r"seeds \[([^\]]*)\]", settings)
    return len([s for s in found.group(1).split(",") if s.strip()]) if found else 0


def title_of(settings: str) -> str:
    """`Fashion-MNIST, LeNet-300-100, 10 epochs, Adam 0.001, batch 128, seeds [0, 1, 2], train
    subset all; ...` -> what tells one run's figure from another's: optimizer, epochs,
    training images and seeds (every peers figure used to share one title)."""
    head = settings.split(";")[0]
    parts = [p.strip() for p in head.split(",")]
    epochs = next((p for p in parts if p.endswith("epochs")), "")
    optimizer = next((p for p in parts if p.split(" ")[0] in ("Adam", "SGD")), "")
    subset = re.search(r"train subset (\w+)", head)
    images = subset.group(1) if subset else "all"
    images = "all training images" if images == "all" else f"{int(images):,} training images"
    seeds = seeds_of(settings)
    return (
        "Peers on Fashion-MNIST, LeNet-300-100\n"
        f"{optimizer}, {epochs}, {images}, {seeds} seed{'s' if seeds != 1 else ''}"
    )


def error_note(seeds: int) -> str:
    """What the markers and bars are: readers otherwise take them for a standard deviation."""
    if seeds <= 1:
        return "One seed: markers are single runs, no error bars."
    return (
        f"Markers: median test accuracy over {seeds} seeds; error bars: min to max over the "
        "seeds (not a standard deviation). Dashed line and band: dense median and min-max."
    )


def peers_figure(settings: str, summary: Summary):
    """Accuracy vs target sparsity per method, the dense model as a line and band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.8))
    for method, points in summary.items():
        if method == "dense" or not points:
            continue
        xs = sorted(points)
        med = [points[x][0] for x in xs]
        low = [points[x][0] - points[x][1] for x in xs]
        high = [points[x][2] - points[x][0] for x in xs]
        axis.errorbar(xs, med, yerr=[low, high], marker="o", capsize=3, label=method)
    dense = next(iter(summary.get("dense", {}).values()), None)
    if dense is not None:
        axis.axhline(dense[0], color="gray", ls="--", label="dense (median)")
        axis.axhspan(dense[1], dense[2], color="gray", alpha=0.15, lw=0)
    axis.set_xlabel("target sparsity of prunable weights (%)")
    axis.set_ylabel("test accuracy (%)")
    axis.set_title(title_of(settings), fontsize=10)
    axis.legend(fontsize=7)
    figure.text(0.01, 0.01, error_note(seeds_of(settings)), fontsize=7, wrap=True)
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    return figure


def redraw(table: Path, output: Path | None = None) -> Path:
    """Draw `<name>.png` beside the table `<name>.md`."""
    import matplotlib.pyplot as plt

    output = output or table.with_suffix(".png")
    figure = peers_figure(*read_table(table.read_text()))
    figure.savefig(output, dpi=120)
    plt.close(figure)
    return output


if __name__ == "__main__":
    for name in sys.argv[1:]:
        print(redraw(Path(name)))
