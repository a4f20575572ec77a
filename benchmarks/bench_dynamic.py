"""Dynamic (per-input) gating vs static structured pruning at equal average MACs, Fashion-MNIST.

For each network, seed and MACs budget (fraction of the dense model's MACs) it trains: dense;
static (layerwise structured `AdaptivePruning`, then `compact`); dynamic (`DynamicGating`); and
both (structured pruning for the first `1 - --gate-share` of the epochs, `compact`, then gates
trained on the compacted network for the rest: the same total epochs as every other row). The
gate budget and the structured target sparsity are chosen before training so that the counted
MACs fraction lies closest to the budget (`dynamic_measure`); each row reports what its trained
model really counted: MACs per input executed by the skipping path, gates included (the batch-1
path's count), and what the batch-256 grouped path ran (a group runs its channels' union).

Latency (CPU, `--threads` threads, torch.utils.benchmark Timer, median): dense, static
compacted, gated without skipping (all channels computed, dropped ones multiplied by zero), and
gated with skipping (`SkippingPath` at batch 1, `GroupedSkippingPath` at batch 256). Plain torch
models are timed NCHW and channels-last, and the faster counts.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_dynamic.py --quick
    PYTHONPATH=. .venv/bin/python benchmarks/bench_dynamic.py        # the full table
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from common import results_dir  # noqa: E402  (benchmarks/ is on sys.path)
from dynamic_figure import most_off, write_figure
from dynamic_measure import (
    CLOCKS,
    INPUT,
    accuracy,
    best_layout_ms,
    compact_net,
    match_budget,
    match_sparsity,
    run_test,
    timed_ms,
)

from lightning_prune.data import FashionMNISTDataModule
from lightning_prune.dynamic import DynamicGating, SkippingPath, dense_macs
from lightning_prune.dynamic.grouped import GroupedSkippingPath
from lightning_prune.export import make_permanent
from lightning_prune.models import Classifier
from lightning_prune.pruning import AdaptivePruning

TRAINING = {"s": 0.0}  # seconds spent in Trainer.fit, for the run-time estimate


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", default=["lenet5", "vgg_small"], choices=["lenet5", "vgg_small"]
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--vgg-seeds", type=int, default=1, help="how many of --seeds vgg_small uses (slow)"
    )
    parser.add_argument(
        "--budgets", type=float, nargs="+", default=[0.5, 0.3, 0.2], help="MACs / dense MACs"
    )
    parser.add_argument("--epochs", type=int, default=2, help="lenet5 epochs per model")
    parser.add_argument("--vgg-epochs", type=int, default=1)
    parser.add_argument(
        "--gate-share", type=float, default=0.5, help="'both': share of epochs for gates"
    )
    parser.add_argument("--subset", type=int, default=0, help="training images (0: all 55k)")
    parser.add_argument("--test-subset", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--min-group", type=int, default=64, help="grouped path's subgroup")
    parser.add_argument("--b1-time", type=float, default=0.3, help="s of timing per b1 row")
    parser.add_argument("--b256-time", type=float, default=1.0, help="s per b256 row")
    parser.add_argument(
        "--clock", default="thread", choices=sorted(CLOCKS), help="thread: steady when shared"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--gate",
        choices=["topk", "threshold"],
        default="topk",
        help="DynamicGating gate: the same cost per input, or a learnt cut-off",
    )
    parser.add_argument("--out", type=Path, default=None, help="default results/dynamic.md")
    parser.add_argument("--quick", action="store_true", help="tiny smoke-test settings")
    args = parser.parse_args()
    if args.quick:
        args.models, args.seeds, args.epochs, args.vgg_epochs = ["lenet5"], args.seeds[:1], 1, 1
        args.subset, args.test_subset, args.b1_time, args.b256_time = 2000, 1000, 0.1, 0.3
    args.out = args.out or results_dir() / ("dynamic_quick.md" if args.quick else "dynamic.md")
    return args


def epochs_of(args, network: str) -> int:
    return args.vgg_epochs if network == "vgg_small" else args.epochs


def fit(args, module: Classifier, data, epochs: float, callbacks: list) -> Classifier:
    """Train for `epochs` (a fraction runs that share of the batches of each epoch)."""
    began = time.perf_counter()
    whole = math.ceil(epochs)
    pl.Trainer(
        max_epochs=whole, limit_train_batches=epochs / whole, limit_val_batches=0,
        accelerator="cpu", devices=1, logger=False,
        num_sanity_val_steps=0, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=callbacks,
    ).fit(module, datamodule=data)  # fmt: skip
    TRAINING["s"] += time.perf_counter() - began
    return module.eval()


def structured(args, network, data, seed: int, sparsity: float, epochs: float):
    """A network pruned by layerwise structured AdaptivePruning (monitor off, so the target is
    reached), then compacted."""
    pl.seed_everything(seed, workers=True)
    model = Classifier(network)
    steps = math.ceil(epochs * math.ceil(len(data.train[1]) / args.batch_size))
    pruning = AdaptivePruning(
        target_sparsity=sparsity, granularity="structured", allocation="layerwise",
        frequency=max(1, min(25, steps // 10)), monitor=None, verbose=False,
    )  # fmt: skip
    fit(args, model, data, epochs, [pruning])
    return compact_net(make_permanent(model.net, dict(pruning.masks)))


def gated(args, network, data, seed: int, budget: float, epochs: float) -> Classifier:
    pl.seed_everything(seed, workers=True)
    model = Classifier(network)
    # the kept fraction falls from 1 to the budget over the first half of training
    ramp = math.ceil(epochs) / 2
    return fit(args, model, data, epochs, [DynamicGating(budget, ramp_epochs=ramp, gate=args.gate)])


def latencies(args, plain=None, model=None, chain=None, x1=None, x256=None) -> dict:
    """b1/b256 ms of a plain net (`plain`) or of a gated model without and with skipping."""
    if plain is not None:
        return {
            "b1": best_layout_ms(plain, x1, args.b1_time, args.clock, args.threads),
            "b256": best_layout_ms(plain, x256, args.b256_time, args.clock, args.threads),
        }
    out = {
        "b1_masked": best_layout_ms(model, x1, args.b1_time, args.clock, args.threads),
        "b256_masked": best_layout_ms(model, x256, args.b256_time, args.clock, args.threads),
    }
    with torch.inference_mode():
        skip1, group = SkippingPath(model, chain), GroupedSkippingPath(model, chain, args.min_group)
    out["b1"] = timed_ms(skip1, x1, args.b1_time, args.clock, args.threads)
    out["b256"] = timed_ms(group, x256, args.b256_time, args.clock, args.threads)
    return out


def run_seed(args, network: str, seed: int, figures: dict, lists: dict) -> dict:
    """Rows of one network and seed: {(method, budget): {acc, macs, ...}}."""
    data = FashionMNISTDataModule(
        batch_size=args.batch_size, subset=args.subset or None, val_subset=256,
        test_subset=args.test_subset, seed=seed, download=False,
    )  # fmt: skip
    data.setup("fit")
    images, labels = data.test
    x1, x256 = images[:1], images[:256]
    epochs = epochs_of(args, network)
    reference_net = Classifier(network).net
    reference = dense_macs(reference_net, torch.zeros(1, *INPUT))
    pl.seed_everything(seed, workers=True)
    dense = fit(args, Classifier(network), data, epochs, [])
    rows = {
        ("dense", 1.0): {
            "acc": accuracy(dense, images, labels),
            "macs": 1.0,
            **latencies(args, plain=dense.net, x1=x1, x256=x256),
        }
    }
    for budget in args.budgets:
        sparsity, _ = match_sparsity(reference_net, budget)
        static = structured(args, network, data, seed, sparsity, epochs)
        rows[("static", budget)] = {
            "acc": accuracy(static, images, labels), "knob": f"sparsity {sparsity:.3f}",
            "macs": dense_macs(static, torch.zeros(1, *INPUT)) / reference,
            **latencies(args, plain=static, x1=x1, x256=x256),
        }  # fmt: skip
        gate_budget, _ = match_budget(reference_net, budget, reference)
        model = gated(args, network, data, seed, gate_budget, epochs)
        run = run_test(model, model.net, images, labels, reference, args.min_group)
        rows[("dynamic", budget)] = summary(run, f"budget {gate_budget:.3f}")
        rows[("dynamic", budget)].update(
            latencies(args, model=model, chain=model.net, x1=x1, x256=x256)
        )
        rows[("both", budget)] = both(args, network, data, seed, budget, reference, x1, x256)
        if seed == args.seeds[0]:
            figures[f"{network}, dynamic, MACs {budget}"] = run
            lists[f"{network}, dynamic, MACs {budget}"] = most_off(run)
    return rows


def both(args, network, data, seed, budget, reference, x1, x256) -> dict:
    """Structured pruning to about sqrt(budget) of the MACs, compaction, then gates trained on
    the compacted network for the rest (budget matched on the compacted architecture)."""
    epochs = epochs_of(args, network)
    sparsity, _ = match_sparsity(Classifier(network).net, math.sqrt(budget))
    pruning_epochs, gate_epochs = epochs * (1 - args.gate_share), epochs * args.gate_share
    compacted = structured(args, network, data, seed, sparsity, pruning_epochs)
    gate_budget, _ = match_budget(compacted, budget, reference)
    pl.seed_everything(seed, workers=True)
    model = Classifier(compacted)
    ramp = math.ceil(gate_epochs) / 2
    gating = DynamicGating(gate_budget, ramp_epochs=ramp, gate=args.gate)
    fit(args, model, data, gate_epochs, [gating])
    images, labels = data.test
    run = run_test(model, model.net, images, labels, reference, args.min_group)
    row = summary(run, f"sparsity {sparsity:.3f} + budget {gate_budget:.3f}")
    return {**row, **latencies(args, model=model, chain=model.net, x1=x1, x256=x256)}


def summary(run, knob: str) -> dict:
    return {"acc": run.acc, "macs": run.macs, "batch_macs": run.batch_fraction, "knob": knob}


def medians(per_seed: list[dict]) -> dict:
    out = {}
    for key in per_seed[0]:
        rows = [r[key] for r in per_seed]
        out[key] = {
            k: statistics.median(r[k] for r in rows) if isinstance(v, float) else v
            for k, v in rows[0].items()
        }
    return out


def fmt(value, pattern: str = "{:.3f}") -> str:
    return "-" if value is None else pattern.format(value)


def table(results: dict[str, dict]) -> str:
    lines = [
        "| network | MACs budget | method | knob (seed 0) | test acc | MACs/input (counted)"
        " | MACs run at b256 | b1 ms | b1 vs dense | b256 ms | b256 vs dense"
        " | b1 ms no skip | b256 ms no skip |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for network, rows in results.items():
        dense = rows[("dense", 1.0)]
        for (method, budget), r in rows.items():
            lines.append(
                f"| {network} | {budget:g} | {method} | {r.get('knob', '-')} | {r['acc']:.4f} |"
                f" {r['macs']:.3f} | {fmt(r.get('batch_macs'))} | {r['b1']:.3f} |"
                f" {r['b1'] / dense['b1']:.2f}x | {r['b256']:.2f} |"
                f" {r['b256'] / dense['b256']:.2f}x | {fmt(r.get('b1_masked'))} |"
                f" {fmt(r.get('b256_masked'), '{:.2f}')} |"
            )
    return "\n".join(lines)


def targets(results: dict[str, dict]) -> list[str]:
    lines = []
    for network, rows in results.items():
        for budget in (0.3, 0.2):
            if ("dynamic", budget) in rows:
                gap = (rows[("dynamic", budget)]["acc"] - rows[("static", budget)]["acc"]) * 100
                verdict = "met" if gap >= 1.0 else "not met"
                lines.append(
                    f"- {network}, MACs {budget}: dynamic {gap:+.2f} points vs static"
                    f" (target >= +1.0): **{verdict}**"
                )
        if ("dynamic", 0.3) in rows:
            ratio = rows[("dynamic", 0.3)]["b1"] / rows[("dense", 1.0)]["b1"]
            verdict = "met" if ratio <= 0.6 else "not met"
            lines.append(
                f"- {network}, MACs 0.3: batch-1 latency of dynamic (skipping) {ratio:.2f}x dense"
                f" (target <= 0.6x): **{verdict}**"
            )
    return lines


def caption(args, results: dict, seconds: float) -> str:
    seeds = {n: args.seeds[: args.vgg_seeds] if n == "vgg_small" else args.seeds for n in results}
    runs = "; ".join(f"{n}: {epochs_of(args, n)} epoch(s), seeds {seeds[n]}" for n in results)
    slow = (
        f" (vgg_small trains about 5x slower per epoch, so it uses the first {args.vgg_seeds}"
        " seed(s), --vgg-seeds, and --vgg-epochs)"
        if "vgg_small" in results
        else ""
    )
    return (
        f"Fashion-MNIST, {args.subset or 'all 55k'} training images, test on"
        f" {args.test_subset or 'all 10k'}; {runs}{slow}; Adam 1e-3, batch {args.batch_size};"
        f" gates '{args.gate}'."
        f" Test acc and latencies: medians over seeds. 'both' prunes for"
        f" {1 - args.gate_share:.0%} of the epochs, compacts, then trains gates for the rest."
        f" Knob: structured target sparsity (layerwise; output layer whole)"
        f" and/or gate budget (kept fraction per layer), each looked up before training so the"
        f" counted MACs land closest to the budget. MACs/input: executed / dense per test image,"
        f" gates included (= the batch-1 skipping path's count); MACs run at b256: what the"
        f" grouped path ran (a group runs the union of its samples' channels; min group"
        f" {args.min_group}). Latency: {args.threads} thread(s), clock '{args.clock}', median of"
        f" torch.utils.benchmark blocks; plain models (dense, static, gated without skipping)"
        f" take the faster of NCHW and channels-last. {seconds:.0f} s total."
    )


def main() -> None:
    args = parse_args()
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*isinstance.treespec, LeafSpec.*")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    results, figures, lists = {}, {}, {}
    for network in args.models:
        seeds = args.seeds[: args.vgg_seeds] if network == "vgg_small" else args.seeds
        per_seed = []
        for seed in seeds:
            began, trained = time.perf_counter(), TRAINING["s"]
            per_seed.append(run_seed(args, network, seed, figures, lists))
            print(
                f"{network} seed {seed}: {time.perf_counter() - began:.0f} s"
                f" ({TRAINING['s'] - trained:.0f} s training)",
                flush=True,
            )
        results[network] = medians(per_seed)
    figure = args.out.with_name(f"{args.out.stem}_per_class.png")
    write_figure(figures, figure)
    off = "\n\n".join(f"{name}:\n\n" + "\n".join(lines) for name, lines in lists.items())
    flat = all(float(r.per_input.max() - r.per_input.min()) < 1e-9 for r in figures.values())
    note = (
        " Every test input ran the same MACs: a top-k gate keeps the same number of channels"
        " for every input (only which ones changes), so the lines are flat by construction."
        if flat
        else ""
    )
    text = (
        f"# Dynamic gating vs static structured pruning at equal average MACs\n\n"
        f"{caption(args, results, time.perf_counter() - start)}\n\n{table(results)}\n\n"
        f"## Targets\n\n" + "\n".join(targets(results)) + "\n\n"
        f"## Adaptivity (seed {args.seeds[0]})\n\nExecuted MACs per true class and per"
        f" confidence bin: `{figure.name}`.{note} Channels gated off on the most test inputs (share"
        f" of inputs), per layer:\n\n{off}\n"
    )
    print(text)
    args.out.write_text(text)
    print(f"wrote {args.out} and {figure}")


if __name__ == "__main__":
    main()
