"""Which AdaptivePruning recipe should be the default? Validation accuracy of candidate recipes
over optimizers, models, targets and seeds that the peers benchmark does not use.

All 55k Fashion-MNIST training images; the choice is made on the 5k validation split only
(the test split is never read here). Runs go to worker processes (one torch thread each).

    .venv/bin/python benchmarks/sweep_defaults.py [--recipes defaults hybrid ...] [--jobs 2]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common import results_dir  # noqa: E402  (benchmarks/ is on sys.path)

# recipe name -> AdaptivePruning arguments that differ from the callback's defaults
RECIPES: dict[str, dict] = {
    "defaults": {},
    "old_defaults": {"criterion": "magnitude", "start": 0.0, "end": 0.7, "frequency": 50},
    "hybrid_adaptive": {
        "criterion": "hybrid", "start": 0.1, "end": 0.9, "frequency": 25,
    },
    "magnitude_long": {"start": 0.1, "end": 0.9, "frequency": 25},
    "hybrid_end80": {"criterion": "hybrid", "start": 0.1, "end": 0.8, "frequency": 25},
    "hybrid_lamp": {
        "criterion": "hybrid", "start": 0.1, "end": 0.9, "frequency": 25, "allocation": "lamp",
    },
    "hybrid_dns": {
        "criterion": "hybrid", "start": 0.1, "end": 0.9, "frequency": 25, "regrowth": "dns",
    },
    "hybrid_end75": {"criterion": "hybrid", "start": 0.1, "end": 0.75, "frequency": 25},
    "hybrid_end80_f10": {"criterion": "hybrid", "start": 0.1, "end": 0.8, "frequency": 10},
    "hybrid_end80_start20": {"criterion": "hybrid", "start": 0.2, "end": 0.8, "frequency": 25},
    "hybrid_end80_rigl": {
        "criterion": "hybrid", "start": 0.1, "end": 0.8, "frequency": 25, "regrowth": "rigl",
    },
    "hybrid_end80_taylor70": {
        "criterion": "hybrid", "criterion_kwargs": {"weights": {"magnitude": 0.3, "taylor": 0.7}},
        "start": 0.1, "end": 0.8, "frequency": 25,
    },
    # structured (channels / neurons) for lenet5: the recipes of point 3
    "s_magnitude": {"granularity": "structured", "allocation": "layerwise", "end": 0.6},
    "s_taylor": {
        "granularity": "structured", "allocation": "layerwise", "end": 0.6, "criterion": "taylor",
    },
    "s_hybrid_end80": {
        "granularity": "structured", "allocation": "layerwise", "criterion": "hybrid",
        "start": 0.1, "end": 0.8, "frequency": 25,
    },
    "s_activation": {
        "granularity": "structured", "allocation": "layerwise", "end": 0.6,
        "criterion": "activation",
    },
}  # fmt: skip
OPTIMIZERS = {"adam": {"optimizer": "adam", "lr": 1e-3}, "sgd": {"optimizer": "sgd", "lr": 0.05}}


def run_one(job: tuple[str, str, str, float, int, int]) -> dict:
    """Train one recipe and return its validation accuracy (a fresh process per call)."""
    recipe, optimizer, network, target, seed, epochs = job
    import pytorch_lightning as pl
    import torch

    from lightning_prune.data import FashionMNISTDataModule
    from lightning_prune.models import Classifier
    from lightning_prune.pruning import AdaptivePruning

    torch.set_num_threads(1)
    pl.seed_everything(seed, verbose=False)
    data = FashionMNISTDataModule(seed=seed)
    if recipe == "dense":
        callbacks = []
    elif recipe == "modelpruning":  # the best ModelPruning variant on all images: ramp to 90 %
        from bench_peers import cubic_amounts
        from pytorch_lightning.callbacks import ModelPruning

        amount = cubic_amounts(target, max(1, round(0.9 * epochs)))
        callbacks = [ModelPruning("l1_unstructured", amount=amount, use_global_unstructured=True)]
    else:
        options = {**RECIPES[recipe], "target_sparsity": target, "monitor": None}
        callbacks = [AdaptivePruning(**options, verbose=False)]
    trainer = pl.Trainer(
        max_epochs=epochs, callbacks=callbacks, accelerator="cpu", devices=1, logger=False,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        num_sanity_val_steps=0, check_val_every_n_epoch=epochs,
    )  # fmt: skip
    model = Classifier(network, **OPTIMIZERS[optimizer])
    start = time.perf_counter()
    trainer.fit(model, data)
    val = float(trainer.callback_metrics["val_acc"])
    return {
        "recipe": recipe, "optimizer": optimizer, "network": network, "target": target,
        "seed": seed, "val_acc": val, "seconds": time.perf_counter() - start,
    }  # fmt: skip


def table(rows: list[dict], targets: list[float]) -> str:
    settings = sorted({(r["optimizer"], r["network"]) for r in rows})
    header = [f"{o}/{n} {int(100 * t)} %" for o, n in settings for t in targets]
    lines = [
        "| recipe | " + " | ".join(header) + " | mean |",
        "|---|" + "---|" * (len(header) + 1),
    ]
    for recipe in dict.fromkeys(r["recipe"] for r in rows):  # in the order they ran
        cells = []
        for (o, n), t in itertools.product(settings, targets):
            vals = [
                r["val_acc"]
                for r in rows
                if (r["recipe"], r["optimizer"], r["network"]) == (recipe, o, n)
                and (r["target"] == t or r["recipe"] == "dense")
            ]
            cells.append(statistics.median(vals) if vals else float("nan"))
        text = " | ".join(f"{100 * c:.2f}" for c in cells)
        lines.append(f"| {recipe} | {text} | {100 * statistics.fmean(cells):.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES))
    parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS))
    parser.add_argument("--networks", nargs="+", default=["lenet300"])
    parser.add_argument("--targets", type=float, nargs="+", default=[0.98, 0.99])
    parser.add_argument("--seeds", type=int, nargs="+", default=[10, 11])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--dense", action="store_true", help="also train the dense model")
    parser.add_argument("--output", default="defaults_sweep")
    args = parser.parse_args()
    unknown = set(args.recipes) - set(RECIPES) - {"modelpruning"}
    if unknown:
        allowed = sorted(RECIPES) + ["modelpruning"]
        parser.error(f"--recipes must be among {allowed}, got {sorted(unknown)}")
    jobs = [
        (recipe, o, n, t, s, args.epochs)
        for recipe, o, n, t, s in itertools.product(
            args.recipes, args.optimizers, args.networks, args.targets, args.seeds
        )
    ]
    if args.dense:
        jobs += [
            ("dense", o, n, 0.0, s, args.epochs)
            for o, n, s in itertools.product(args.optimizers, args.networks, args.seeds)
        ]
    out = results_dir()
    out.mkdir(parents=True, exist_ok=True)
    log = out / f"{args.output}.jsonl"
    rows = []
    start = time.perf_counter()
    with ProcessPoolExecutor(args.jobs) as pool, log.open("a") as sink:
        for i, row in enumerate(pool.map(run_one, jobs), 1):
            rows.append(row)
            sink.write(json.dumps(row) + "\n")
            sink.flush()
            print(f"[{i}/{len(jobs)}] {row}", flush=True)
    text = (
        f"Validation accuracy % (median over seeds {args.seeds}), all 55k training images, "
        f"{args.epochs} epochs, controller off; wall {time.perf_counter() - start:.0f} s.\n\n"
        + table(rows, args.targets)
    )
    print(text)
    (out / f"{args.output}.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
