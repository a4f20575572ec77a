"""Dynamic (per-input) gating vs dense on Fashion-MNIST: accuracy, executed MACs, batch-1 latency.

Trains a dense LeNet-5 and one per budget with ``DynamicGating`` (same epochs and seed), then
reports test accuracy (masked full forward, batch 128), the average fraction of the dense MACs
that the batch-1 skipping path really executed (gates included, counted per test image), and
batch-1 CPU latency (median over repeats) of the dense net, the gated net without skipping (all
channels computed, dropped ones multiplied by zero) and the skipping path.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_dynamic.py --quick
    PYTHONPATH=. .venv/bin/python benchmarks/bench_dynamic.py --subset 10000 --epochs 3 --seed 0
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from common import results_dir  # noqa: E402  (benchmarks/ is on sys.path)

from lightning_prune.data import FashionMNISTDataModule
from lightning_prune.dynamic import DynamicGating, SkippingPath
from lightning_prune.models import Classifier

DATA_DIR = "/usr/share/datasets/fashion-mnist"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--subset", type=int, default=10000, help="training images (0: all)")
    parser.add_argument("--test-subset", type=int, default=None)
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.5, 0.3])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=int, default=500, help="test images for batch-1 MACs")
    parser.add_argument("--repeats", type=int, default=300, help="batch-1 latency repeats")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=results_dir() / "dynamic.md")
    parser.add_argument("--quick", action="store_true", help="tiny smoke-test settings")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.subset, args.test_subset = 1, 2000, 1000
        args.images, args.repeats = 100, 50
    return args


def train(args: argparse.Namespace, budget: float | None) -> tuple[Classifier, object]:
    pl.seed_everything(args.seed, workers=True)
    data = FashionMNISTDataModule(
        data_dir=DATA_DIR, subset=args.subset or None, val_subset=1000,
        test_subset=args.test_subset, seed=args.seed, download=False,
    )  # fmt: skip
    model = Classifier("lenet5")
    # the kept fraction falls from 1 to the budget over the first half of training
    callbacks = [] if budget is None else [DynamicGating(budget, ramp_epochs=args.epochs / 2)]
    pl.Trainer(
        max_epochs=args.epochs, accelerator="cpu", devices=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=callbacks,
    ).fit(model, datamodule=data)  # fmt: skip
    return model.eval(), data


@torch.no_grad()
def accuracy(model: Classifier, data) -> float:
    correct = total = 0
    for x, y in data.test_dataloader():
        correct += int((model(x).argmax(dim=1) == y).sum())
        total += len(y)
    return correct / total


def median_ms(call, inputs: list[torch.Tensor], repeats: int) -> float:
    times = []
    with torch.inference_mode():
        for i in range(repeats + 10):
            x = inputs[i % len(inputs)]
            start = time.perf_counter()
            call(x)
            if i >= 10:
                times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def measure(model: Classifier, data, args, gated: bool) -> dict:
    images = [x[None] for x in data.test_dataloader().dataset[: args.images][0]]
    row = {"acc": accuracy(model, data), "b1_ms": median_ms(model, images, args.repeats)}
    if gated:
        path = SkippingPath(model, chain=model.net)
        counts = [path(x)[1] for x in images]
        row["macs"] = statistics.mean(c.fraction for c in counts)
        row["spread"] = (min(c.fraction for c in counts), max(c.fraction for c in counts))
        row["skip_ms"] = median_ms(path, images, args.repeats)
    return row


def table(rows: dict[str, dict]) -> str:
    dense_ms = rows["dense"]["b1_ms"]
    lines = [
        "| model | test acc | executed MACs (mean, min-max per image) | b1 ms full forward |"
        " b1 ms skipping path | skipping / dense |",
        "|---" * 6 + "|",
    ]
    for name, r in rows.items():
        if "macs" not in r:
            lines.append(f"| {name} | {r['acc']:.4f} | 1.000 | {r['b1_ms']:.3f} | - | 1.00x |")
            continue
        low, high = r["spread"]
        lines.append(
            f"| {name} | {r['acc']:.4f} | {r['macs']:.3f} ({low:.3f}-{high:.3f}) | "
            f"{r['b1_ms']:.3f} | {r['skip_ms']:.3f} | {r['skip_ms'] / dense_ms:.2f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    dense, data = train(args, None)
    rows = {"dense": measure(dense, data, args, gated=False)}
    for budget in args.budgets:
        model, _ = train(args, budget)
        rows[f"dynamic, budget {budget}"] = measure(model, data, args, gated=True)
    settings = (
        f"lenet5, Fashion-MNIST, {args.epochs} epoch(s) on {args.subset or 'all 55k'} training"
        f" images, test on {args.test_subset or 'all 10k'}, Adam 1e-3, batch 128, seed"
        f" {args.seed}; MACs: executed / dense per image over {args.images} test images (gates"
        f" counted); latency: batch 1, {args.threads} CPU thread(s), median of {args.repeats};"
        f" {time.perf_counter() - start:.0f} s total"
    )
    text = f"# Dynamic gating: dense vs per-input gates\n\n{settings}\n\n{table(rows)}\n"
    print(text)
    out = args.out.with_name("dynamic_quick.md") if args.quick else args.out
    out.write_text(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
