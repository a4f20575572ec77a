"""AdaptivePruning vs its peers on Fashion-MNIST / LeNet-300-100, same training budget.

Peers: Lightning's ModelPruning (global L1 unstructured, cubic amounts per epoch reaching the
target at the same point of training as ours), one-shot global magnitude pruning after dense
training plus fine-tuning (torch.nn.utils.prune), and the dense model. Prints a markdown table
(median test accuracy over seeds, [min-max]) and writes benchmarks/results/peers.{md,png}.

    .venv/bin/python benchmarks/bench_peers.py [--quick] [--seeds 0 1 2] [--epochs 10]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from pytorch_lightning.callbacks import ModelPruning
from pytorch_lightning.utilities.types import STEP_OUTPUT
from torch import nn
from torch.nn.utils import prune
from typing_extensions import override

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common import results_dir  # noqa: E402  (benchmarks/ is on sys.path)

from lightning_prune.config import load_preset  # noqa: E402
from lightning_prune.data import FashionMNISTDataModule  # noqa: E402
from lightning_prune.models import Classifier  # noqa: E402
from lightning_prune.pruning import AdaptivePruning  # noqa: E402

RESULTS = results_dir()
MODEL: dict = {}  # Classifier keyword arguments (optimizer, lr), set from the command line
METHODS = {
    "adaptive": "",
    "modelpruning": "ModelPruning (global L1)",
    "oneshot": "one-shot + fine-tune",
}


class StepTimer(pl.Callback):
    """Wall time of each training step, batch start to batch end (put it last)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._start = time.perf_counter()

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: STEP_OUTPUT,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self.times.append(time.perf_counter() - self._start)


def preset_options(name: str, quick: bool) -> dict:
    """AdaptivePruning arguments of a conf/pruning preset; 'defaults' is the callback's own."""
    options = {}
    if name != "defaults":
        options = OmegaConf.to_container(load_preset("pruning", name))
        options.pop("_target_")
    if quick:
        options["frequency"] = 5
    return options


def make_trainer(epochs: int, callbacks: list[pl.Callback], **kwargs) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=epochs, callbacks=callbacks, accelerator="cpu", devices=1, logger=False,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        num_sanity_val_steps=0, limit_val_batches=0,  # no method here reads validation
        **kwargs,
    )  # fmt: skip


def test_accuracy(trainer: pl.Trainer, model: Classifier, data) -> float:
    return float(trainer.test(model, data, verbose=False)[0]["test_acc"])


def weight_sparsity(model: nn.Module) -> float:
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / sum(w.numel() for w in weights)


def run_dense(data, epochs: int):
    timer = StepTimer()
    trainer, model = make_trainer(epochs, [timer]), Classifier("lenet300", **MODEL)
    trainer.fit(model, data)
    return test_accuracy(trainer, model, data), 0.0, timer.times


def run_adaptive(data, epochs: int, sparsity: float, preset: dict):
    timer = StepTimer()
    options = {**preset, "target_sparsity": sparsity, "monitor": None, "verbose": False}
    pruning = AdaptivePruning(**options)
    trainer, model = make_trainer(epochs, [pruning, timer]), Classifier("lenet300", **MODEL)
    trainer.fit(model, data)
    return test_accuracy(trainer, model, data), weight_sparsity(model.net), timer.times


def cubic_amounts(sparsity: float, prune_epochs: int):
    """ModelPruning prunes a fraction of the *remaining* weights each epoch: convert a cubic
    cumulative schedule reaching `sparsity` after `prune_epochs` epochs into those fractions."""
    cumulative = [sparsity * (1 - (1 - (e + 1) / prune_epochs) ** 3) for e in range(prune_epochs)]

    def amount(epoch: int) -> float:
        if epoch >= prune_epochs:
            return 0.0
        before = cumulative[epoch - 1] if epoch > 0 else 0.0
        return 1.0 - (1.0 - cumulative[epoch]) / (1.0 - before)

    return amount


def run_model_pruning(data, epochs: int, sparsity: float, end: float):
    timer = StepTimer()
    prune_epochs = max(1, round(end * epochs))
    pruning = ModelPruning(
        "l1_unstructured", amount=cubic_amounts(sparsity, prune_epochs),
        use_global_unstructured=True, verbose=0,
    )  # fmt: skip
    trainer, model = make_trainer(epochs, [pruning, timer]), Classifier("lenet300", **MODEL)
    trainer.fit(model, data)
    return test_accuracy(trainer, model, data), weight_sparsity(model.net), timer.times


def run_oneshot(dense_model: Classifier, data, finetune_epochs: int, sparsity: float):
    timer = StepTimer()
    model = copy.deepcopy(dense_model)
    layers = [(m, "weight") for m in model.net.modules() if isinstance(m, nn.Linear)]
    prune.global_unstructured(layers, pruning_method=prune.L1Unstructured, amount=sparsity)
    trainer = make_trainer(finetune_epochs, [timer])
    trainer.fit(model, data)
    for module, name in layers:
        prune.remove(module, name)
    return test_accuracy(trainer, model, data), weight_sparsity(model.net), timer.times


def timing_runs(data, preset: dict, rounds: int, batches: int) -> dict[str, list[float]]:
    """Step times measured interleaved (dense, ours, ModelPruning in turn, `rounds` times, the
    order rotated each round), so that load from other processes hits every method alike.
    Each run has 4 short epochs with pruning active from the first epoch end; epoch 0
    (warm-up, no masks yet) is not counted."""
    times: dict[str, list[float]] = defaultdict(list)
    methods = ["dense", "adaptive", "modelpruning"]
    for round_ in range(rounds):
        for method in methods[round_ % 3 :] + methods[: round_ % 3]:  # rotate the order
            timer, callbacks = StepTimer(), []
            if method == "adaptive":
                options = {**preset, "target_sparsity": 0.98, "monitor": None, "verbose": False}
                callbacks = [AdaptivePruning(**{**options, "start": 0.25, "end": 0.75})]
            elif method == "modelpruning":
                callbacks = [
                    ModelPruning("l1_unstructured", amount=0.5, use_global_unstructured=True)
                ]
            trainer = make_trainer(4, [*callbacks, timer], limit_train_batches=batches)
            trainer.fit(Classifier("lenet300", **MODEL), data)
            times[method].extend(timer.times[batches:])
    return times


def write_timing(args, times: dict[str, list[float]], adaptive: str) -> str:
    dense = statistics.median(times["dense"])
    names = {"dense": "dense", "adaptive": adaptive, "modelpruning": "ModelPruning (global L1)"}
    lines = [
        f"Step time (batch start to batch end), interleaved runs, {len(times['dense'])} steps "
        "per method; median [25th-75th percentile] ms.",
        "",
        "| method | step (ms) | vs dense |",
        "|---|---|---|",
    ]
    for key, name in names.items():
        q = statistics.quantiles(times[key], n=4)
        med = statistics.median(times[key])
        lines.append(
            f"| {name} | {1000 * med:.2f} [{1000 * q[0]:.2f}-{1000 * q[2]:.2f}] "
            f"| {med / dense:.3f}x |"
        )
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.output}_timing.md").write_text(text + "\n")
    return text


def cell(values: list[float]) -> str:
    return (
        f"{100 * statistics.median(values):.2f} [{100 * min(values):.2f}-{100 * max(values):.2f}]"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings (about a minute)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.9, 0.95, 0.98, 0.99])
    parser.add_argument(
        "--presets", nargs="+", default=["defaults", "hybrid_adaptive"],
        help="AdaptivePruning arms: conf/pruning presets, or 'defaults' (the callback's own)",
    )  # fmt: skip
    parser.add_argument("--optimizer", default="adam", choices=["adam", "sgd"])
    parser.add_argument("--lr", type=float, default=None, help="default: 1e-3 Adam, 0.05 SGD")
    parser.add_argument("--subset", type=int, default=None, help="training images (default all)")
    parser.add_argument("--finetune", type=int, default=3, help="one-shot: fine-tune epochs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timing-rounds", type=int, default=12, help="interleaved timing rounds")
    parser.add_argument("--timing-only", action="store_true", help="only the timing phase")
    parser.add_argument("--output", default="peers", help="results/<output>.md and .png")
    parser.add_argument(
        "--methods", nargs="+", default=list(METHODS), choices=list(METHODS),
        help="peers to run (dense always runs: it is the reference)",
    )  # fmt: skip
    parser.add_argument(
        "--mp-ends", type=float, nargs="+", default=None,
        help="ModelPruning variants: each reaches its target after this fraction of the epochs "
        "(default: the preset's `end`, i.e. the same ramp as ours, 0.6 and 1.0 = at the end)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.epochs, args.sparsities = [0], 2, [0.9, 0.98]
        args.subset, args.finetune = args.subset or 3000, 1
    torch.set_num_threads(args.threads)
    MODEL.update(
        optimizer=args.optimizer, lr=args.lr or {"adam": 1e-3, "sgd": 0.05}[args.optimizer]
    )
    args.optimizer_text = f"{args.optimizer.upper() if args.optimizer == 'sgd' else 'Adam'} "
    args.optimizer_text += f"{MODEL['lr']:g}" + (" momentum 0.9" if args.optimizer == "sgd" else "")
    presets = {name: preset_options(name, args.quick) for name in args.presets}
    preset = presets[args.presets[0]]  # the one timed
    acc: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    achieved: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    steps: dict[str, list[float]] = defaultdict(list)
    arms = {name: f"AdaptivePruning ({name})" for name in args.presets}
    adaptive = arms[args.presets[0]]
    mp_ends = sorted(set(args.mp_ends or [0.6, 0.8, 0.9]))
    labels = {"adaptive": list(arms.values()), "oneshot": [METHODS["oneshot"]], "modelpruning": []}
    for end in mp_ends:
        label = f"ModelPruning (global L1, target at {100 * end:g}% of epochs)"
        labels["modelpruning"].append(label)
    args.labels = [label for m in args.methods for label in labels[m]]

    def record(method: str, sparsity: float, result) -> None:
        accuracy, reached, times = result
        acc[method][sparsity].append(accuracy)
        achieved[method][sparsity].append(reached)
        steps[method].extend(times[len(times) // 10 :])  # skip warm-up steps
        print(
            f"  {method:32s} s={sparsity:.2f} acc={accuracy:.4f} sparsity={reached:.4f}", flush=True
        )

    started = time.time()
    timing_data = FashionMNISTDataModule(batch_size=128, subset=args.subset, seed=0)
    if args.timing_only:
        write_timing(args, timing_runs(timing_data, preset, args.timing_rounds, 60), adaptive)
        return
    for seed in args.seeds:
        data = FashionMNISTDataModule(batch_size=128, subset=args.subset, seed=seed)
        print(f"seed {seed}", flush=True)
        pl.seed_everything(seed, verbose=False)
        record("dense", 0.0, run_dense(data, args.epochs))
        pl.seed_everything(seed, verbose=False)
        dense_part = Classifier("lenet300", **MODEL)
        if "oneshot" in args.methods:
            make_trainer(args.epochs - args.finetune, []).fit(dense_part, data)
        for sparsity in args.sparsities:
            for name, label in arms.items():
                if "adaptive" not in args.methods:
                    break
                pl.seed_everything(seed, verbose=False)
                options = presets[name]
                record(label, sparsity, run_adaptive(data, args.epochs, sparsity, options))
            for end, label in zip(mp_ends, labels["modelpruning"], strict=True):
                if "modelpruning" not in args.methods:
                    break
                pl.seed_everything(seed, verbose=False)
                record(label, sparsity, run_model_pruning(data, args.epochs, sparsity, end))
            if "oneshot" in args.methods:
                pl.seed_everything(seed, verbose=False)
                record(METHODS["oneshot"], sparsity, run_oneshot(
                    dense_part, data, args.finetune, sparsity))  # fmt: skip
        write_report(args, acc, achieved, steps, adaptive, time.time() - started)  # partial
    write_report(args, acc, achieved, steps, adaptive, time.time() - started)
    batches = 10 if args.quick else 60
    write_timing(args, timing_runs(timing_data, preset, args.timing_rounds, batches), adaptive)


def write_report(args, acc, achieved, steps, adaptive: str, elapsed: float) -> None:
    dense_step = statistics.median(steps["dense"])
    header = "| method | " + " | ".join(f"{100 * s:g} %" for s in args.sparsities)
    header += " | median step (ms) | step vs dense |"
    lines = [
        f"Fashion-MNIST, LeNet-300-100, {args.epochs} epochs, {args.optimizer_text}, batch 128, "
        f"seeds {args.seeds[: len(acc['dense'][0.0])]}, train subset {args.subset or 'all'}; "
        "test accuracy % median "
        f"[min-max] over seeds (columns: target sparsity of the prunable weights).",
        "",
        header,
        "|" + "---|" * (len(args.sparsities) + 3),
    ]
    dense_cell = cell(acc["dense"][0.0])
    lines.append(
        "| dense | " + " | ".join(dense_cell for _ in args.sparsities)
        + f" | {1000 * dense_step:.2f} | 1.00x |"
    )  # fmt: skip
    for method in args.labels:
        step = statistics.median(steps[method])
        cells = " | ".join(cell(acc[method][s]) for s in args.sparsities)
        lines.append(f"| {method} | {cells} | {1000 * step:.2f} | {step / dense_step:.2f}x |")
    for label in args.labels:
        if label.startswith("AdaptivePruning"):
            lines += ["", f"{label}: " + verdict(args, acc, label)]
    lines.append("")
    reached = {
        m: {s: statistics.median(v) for s, v in d.items()}
        for m, d in achieved.items()
        if m != "dense"
    }
    lines.append("Achieved sparsity (median): " + "; ".join(
        f"{m}: " + ", ".join(f"{100 * v:.2f}" for v in r.values()) for m, r in reached.items()
    ) + f". Wall time {elapsed / 60:.1f} min. One-shot step time: fine-tuning only.")  # fmt: skip
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.output}.md").write_text(text + "\n")
    plot(args)


def verdict(args, acc, adaptive: str) -> str:
    """Ours against the best ModelPruning variant at each sparsity, and 95 % against dense."""
    med = {m: {s: statistics.median(v) for s, v in d.items()} for m, d in acc.items()}
    peers = [label for label in args.labels if label.startswith("ModelPruning")]
    parts = []
    for s in args.sparsities:
        if adaptive not in med or not peers or s not in med[adaptive]:
            continue
        best = max(med[p][s] for p in peers)
        margin = 100 * (med[adaptive][s] - best)
        goal = " (target >= +1: " + ("met" if margin >= 1.0 else "NOT met") + ")"
        parts.append(f"{100 * s:g} %: {margin:+.2f}" + (goal if s >= 0.98 else ""))
    dense = med["dense"][0.0]
    line = "Ours minus the best ModelPruning variant (median accuracy, points): " + "; ".join(parts)
    if 0.95 in med.get(adaptive, {}):
        gap = 100 * (med[adaptive][0.95] - dense)
        paired = 100 * statistics.median(
            a - d for a, d in zip(acc[adaptive][0.95], acc["dense"][0.0], strict=True)
        )  # the same seed's dense run
        line += (
            f". At 95 % vs dense: difference of medians {gap:+.2f}, median per-seed difference "
            f"{paired:+.2f} (target >= 0: {'met' if min(gap, paired) >= 0 else 'NOT met'})."
        )
    return line


def plot(args) -> None:
    """The figure, drawn from the table just written (benchmarks/peers_figure.py)."""
    from peers_figure import redraw

    redraw(RESULTS / f"{args.output}.md")


if __name__ == "__main__":
    main()
