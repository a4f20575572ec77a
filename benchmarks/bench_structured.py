"""Structured pruning end to end: dense vs structurally pruned + compacted, Fashion-MNIST.

Trains a dense model and one pruned by ``AdaptivePruning(granularity="structured")`` for the
same epochs and seeds, compacts the pruned one (dead channels/neurons physically removed)
and reports test accuracy, parameters, MACs, on-disk size and CPU latency (torch and
onnxruntime, batch 1 and 256; medians over repeats, then over seeds).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_structured.py --quick
    PYTHONPATH=. .venv/bin/python benchmarks/bench_structured.py --epochs 3 --subset 0 \
        --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import io
import logging
import math
import statistics
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch_pruning as tp
from common import results_dir  # noqa: E402  (benchmarks/ is on sys.path)
from torch import nn

from lightning_prune.data import FashionMNISTDataModule
from lightning_prune.export import (
    compact,
    export_onnx,
    make_permanent,
    measure_latency,
    measure_onnx_latency,
    size_report,
)
from lightning_prune.models import Classifier
from lightning_prune.pruning import AdaptivePruning

INPUT_SHAPE = (1, 28, 28)
ROWS = ("dense", "pruned (masked)", "pruned + compacted")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="lenet5", choices=["lenet5", "vgg_small"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--subset", type=int, default=0, help="training images (0: all 55k)")
    parser.add_argument("--test-subset", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--target-sparsity", type=float, default=0.7)
    parser.add_argument(
        "--allocation", default="layerwise", choices=["global", "layerwise", "lamp"]
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--repeats", type=int, default=50, help="latency repeats per setting")
    parser.add_argument("--threads", type=int, default=1, help="torch/onnxruntime threads")
    parser.add_argument("--out", type=Path, default=results_dir() / "structured.md")
    parser.add_argument("--quick", action="store_true", help="tiny smoke-test settings")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.subset, args.test_subset = 1, 2000, 1000
        args.seeds, args.repeats = args.seeds[:1], 5
    return args


def train(args: argparse.Namespace, seed: int, prune: bool) -> tuple[Classifier, object, object]:
    """Fit one model; returns (module, datamodule, pruning callback or None)."""
    pl.seed_everything(seed, workers=True)
    data = FashionMNISTDataModule(
        batch_size=args.batch_size,
        subset=args.subset or None,
        val_subset=2000,
        test_subset=args.test_subset,
        seed=seed,
    )
    model = Classifier(network=args.network)
    callbacks = []
    if prune:
        total_steps = args.epochs * math.ceil((args.subset or 55000) / args.batch_size)
        callbacks.append(
            AdaptivePruning(
                target_sparsity=args.target_sparsity,
                granularity="structured",
                allocation=args.allocation,
                frequency=max(1, min(25, total_steps // 10)),  # the default, or 10 per run
                verbose=False,
            )
        )
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    trainer.fit(model, datamodule=data)
    return model, data, callbacks[0] if callbacks else None


@torch.no_grad()
def accuracy(net: nn.Module, data: FashionMNISTDataModule) -> float:
    net.eval()
    correct = total = 0
    for x, y in data.test_dataloader():
        correct += int((net(x).argmax(dim=1) == y).sum())
        total += len(y)
    return correct / total


def saved_bytes(net: nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def measure(net: nn.Module, args: argparse.Namespace, workdir: Path, name: str) -> dict:
    """Size, MACs and latencies of one network (eval mode)."""
    net = net.eval()
    example = torch.randn(1, *INPUT_SHAPE)
    macs, params = tp.utils.count_ops_and_params(net, example)
    nonzero = sum(int(torch.count_nonzero(p)) for p in net.parameters())
    onnx_path = export_onnx(net, workdir / f"{name}.onnx", torch.randn(4, *INPUT_SHAPE))
    row = {
        "params": params,
        "nonzero": nonzero,
        "macs": macs,
        "torch_save_kb": saved_bytes(net) / 1024,
        "sparse_kb": size_report(net)["sparse_bytes"] / 1024,
        "onnx_kb": onnx_path.stat().st_size / 1024,
    }
    for batch in (1, 256):
        kw = {"batch_size": batch, "repeats": args.repeats, "threads": args.threads}
        row[f"torch_ms_b{batch}"] = measure_latency(net, INPUT_SHAPE, **kw)["median_ms"]
        row[f"ort_ms_b{batch}"] = measure_onnx_latency(onnx_path, INPUT_SHAPE, **kw)["median_ms"]
    return row


def run_seed(args: argparse.Namespace, seed: int, workdir: Path) -> dict[str, dict]:
    dense, data, _ = train(args, seed, prune=False)
    pruned, _, callback = train(args, seed, prune=True)
    masks = getattr(callback, "masks", None)
    pruned_net = make_permanent(pruned.net, dict(masks) if masks else None)
    example = torch.randn(64, *INPUT_SHAPE)
    compacted = compact(pruned_net, example)
    results = {}
    for i, (name, net) in enumerate(zip(ROWS, (dense.net, pruned_net, compacted), strict=True)):
        results[name] = {"acc": accuracy(net, data), **measure(net, args, workdir, f"{i}_{seed}")}
    summary = callback.summary()
    layers = {k: round(v, 3) for k, v in summary.get("layer_sparsity", {}).items()}
    print(f"seed {seed}: sparsity {summary['sparsity']:.3f}, per layer {layers}", flush=True)
    return results


def median_rows(per_seed: list[dict[str, dict]]) -> dict[str, dict]:
    return {
        row: {key: statistics.median(r[row][key] for r in per_seed) for key in per_seed[0][row]}
        for row in ROWS
    }


def table(rows: dict[str, dict]) -> str:
    head = (
        "| model | test acc | params | nonzero | MACs | torch.save KB | sparse npz KB | "
        "ONNX KB | torch ms b1 | torch ms b256 | ORT ms b1 | ORT ms b256 |"
    )
    lines = [head, "|---" * 12 + "|"]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['acc']:.4f} | {r['params']:,.0f} | {r['nonzero']:,.0f} | "
            f"{r['macs'] / 1e6:.3f} M | {r['torch_save_kb']:.1f} | {r['sparse_kb']:.1f} | "
            f"{r['onnx_kb']:.1f} | {r['torch_ms_b1']:.3f} | {r['torch_ms_b256']:.2f} | "
            f"{r['ort_ms_b1']:.3f} | {r['ort_ms_b256']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        per_seed = [run_seed(args, seed, Path(tmp)) for seed in args.seeds]
    rows = median_rows(per_seed)
    settings = (
        f"{args.network}, Fashion-MNIST, {args.epochs} epochs on "
        f"{args.subset or 'all 55k'} training images, "
        f"Adam 1e-3, batch {args.batch_size}, structured target sparsity {args.target_sparsity} "
        f"({args.allocation} allocation; the callback keeps the output layer whole), "
        f"seeds {args.seeds} (medians), {args.threads} CPU thread(s), latency median of "
        f"{args.repeats} repeats; {time.perf_counter() - start:.0f} s total"
    )
    text = f"# Structured pruning: dense vs compacted\n\n{settings}\n\n{table(rows)}\n"
    print(text)
    out = args.out.with_name("structured_quick.md") if args.quick else args.out
    out.write_text(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
