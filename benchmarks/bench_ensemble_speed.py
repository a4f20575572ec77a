"""What an ensemble of pruned models costs at inference: one dense model vs the plain ensemble
vs the fast ensemble (`WeightedEnsemble.fast`) vs the whole ensemble as one ONNX graph.

Fashion-MNIST, CPU. Two cases:
- LeNet-300-100: members pruned to ~96 % unstructured sparsity by `AdaptivePruning` during a
  real training run (the recipes of bench_ensembles.py, controller off);
- LeNet-5: members pruned structurally (~70 % of channels / neurons) by `AdaptivePruning`
  (granularity "structured", layerwise), then compacted by the fast form.
The dense model is the same network trained for the same epochs without pruning. Uniform
weights. Latency: median ms per batch at batch 1 and 256 (`measure_latency`,
`measure_onnx_latency`, 1 thread), the median of `--rounds` interleaved rounds.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_ensemble_speed.py            # full
    PYTHONPATH=. .venv/bin/python benchmarks/bench_ensemble_speed.py --quick    # smoke test

Prints a markdown table and writes benchmarks/results/ensemble_speed.md (--out). The tables in
results/ come from `--networks lenet300 --out results/ensemble_speed_lenet300.md` and
`--networks lenet5 --seeds 0 --epochs 3 --out results/ensemble_speed_lenet5.md`.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from bench_ensembles import RECIPES  # noqa: E402  (benchmarks/ is on sys.path)
from common import results_dir  # noqa: E402
from lightning_prune.ensembles import WeightedEnsemble, export_ensemble_onnx
from lightning_prune.ensembles.distill import distill_student
from lightning_prune.ensembles.fast import prepare_member
from torch import nn

from lightning_prune.data import FashionMNISTDataModule
from lightning_prune.export import export_onnx, make_permanent
from lightning_prune.export.latency import measure_latency, measure_onnx_latency
from lightning_prune.models import Classifier
from lightning_prune.pruning import AdaptivePruning

INPUT_SHAPE = (1, 28, 28)
BATCHES = (1, 256)
FOLDED = "fast ensemble, combine=logprob (folded)"
CASES = {
    "lenet300": {"granularity": "unstructured", "target_sparsity": 0.96},
    "lenet5": {"granularity": "structured", "target_sparsity": 0.7, "allocation": "layerwise"},
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny subset, 1 epoch, few repeats")
    parser.add_argument("--networks", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--no-distill", action="store_true", help="skip the distilled student")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--subset", type=int, default=0, help="training images (0: all 55k)")
    parser.add_argument("--repeats", type=int, default=50, help="latency samples per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.quick:
        args.members, args.epochs, args.subset, args.repeats, args.rounds = 2, 1, 2000, 5, 1
        args.seeds = args.seeds[:1]
    name = "ensemble_speed-quick.md" if args.quick else "ensemble_speed.md"
    args.out = args.out or results_dir() / name
    return args


def _data(args: argparse.Namespace) -> FashionMNISTDataModule:
    test = 1000 if args.quick else None
    return FashionMNISTDataModule(subset=args.subset or None, val_subset=2000, test_subset=test)


def train(args: argparse.Namespace, network: str, seed: int, recipe: dict | None) -> Classifier:
    """One model, pruned with `recipe` (criterion, schedule, regrowth, lr: the recipes of
    bench_ensembles.py) or dense without: plain weights with exact zeros, eval mode."""
    pl.seed_everything(seed, verbose=False)
    model = Classifier(network, lr=recipe["lr"] if recipe else 1e-3)
    callbacks = []
    if recipe:
        options = {k: v for k, v in recipe.items() if k != "lr"}
        callbacks.append(AdaptivePruning(**CASES[network], **options, monitor=None,
                                         verbose=False))  # fmt: skip
    trainer = pl.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=callbacks)  # fmt: skip
    trainer.fit(model, datamodule=_data(args))
    model.net = make_permanent(model.net)
    return model.eval()


@torch.inference_mode()
def accuracy(model: nn.Module, data: FashionMNISTDataModule) -> float:
    correct = total = 0
    for x, y in data.test_dataloader():
        correct += int((model(x).argmax(dim=1) == y).sum())
        total += len(y)
    return 100 * correct / total


def _nonzero(modules: list[nn.Module]) -> int:
    return sum(int(t.count_nonzero()) for m in modules for t in m.state_dict().values()
               if t.is_floating_point())  # fmt: skip


def _onnx_nonzero(path: Path) -> int:
    """Nonzero float entries among the graph's stored tensors."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    arrays = [numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer]
    return sum(int(np.count_nonzero(a)) for a in arrays if a.dtype.kind == "f")


def student_row(args: argparse.Namespace, network: str, ensemble, seed: int) -> dict:
    """One pruned model of the members' kind trained on the ensemble's soft predictions
    (`ensemble.distill`), compacted where it has dead units: one member's cost."""
    case = dict(CASES[network])
    sparsity = case.pop("target_sparsity")
    config = {"_target_": "lightning_prune.models.Classifier", "network": network}
    student, acc, _ = distill_student(ensemble, _data(args), config, sparsity=sparsity,
                                      epochs=args.epochs, seed=seed, pruning=case)  # fmt: skip
    net, _ = prepare_member(student, torch.randn(1, *INPUT_SHAPE), compact=True)
    return {"name": "distilled student", "model": net, "acc": 100 * acc,
            "nonzero": _nonzero([net])}  # fmt: skip


def run_case(
    args: argparse.Namespace, network: str, workdir: Path, seed: int
) -> tuple[list[dict], str]:
    """Rows (name, accuracy, nonzeros, size, latencies) for one network and seed, and a note."""
    start = time.perf_counter()
    members = [train(args, network, 100 * (seed + 1) + i, RECIPES[i % len(RECIPES)])
               for i in range(args.members)]  # fmt: skip
    dense = train(args, network, seed, None)
    ensemble = WeightedEnsemble(members).eval()
    built = time.perf_counter()
    fast = ensemble.fast(torch.randn(1, *INPUT_SHAPE), batch_sizes=BATCHES)
    build_s = time.perf_counter() - built
    geometric = WeightedEnsemble(members, combine="logprob").eval()
    folded = geometric.fast(torch.randn(1, *INPUT_SHAPE), batch_sizes=BATCHES)
    example = torch.randn(4, *INPUT_SHAPE)
    dense_onnx = export_onnx(dense.net, workdir / f"{network}-dense.onnx", example)
    ens_onnx = export_ensemble_onnx(ensemble, workdir / f"{network}-ensemble.onnx", example,
                                    batch_sizes=BATCHES, threads=args.threads)  # fmt: skip
    data = _data(args)
    data.prepare_data()
    data.setup("test")
    acc_plain = accuracy(ensemble, data)
    acc_fast = accuracy(fast, data)
    rows = [
        {"name": "one dense model", "model": dense.net, "acc": accuracy(dense, data),
         "nonzero": _nonzero([dense.net])},
        {"name": "one dense model, ONNX", "onnx": dense_onnx, "acc": None,
         "nonzero": _onnx_nonzero(dense_onnx)},
        {"name": f"plain ensemble ({args.members} members)", "model": ensemble,
         "acc": acc_plain, "nonzero": _nonzero(list(ensemble.members))},
        {"name": "fast ensemble", "model": fast, "acc": acc_fast,
         "nonzero": fast.plan["nonzero"]},
        {"name": "ONNX ensemble (one graph)", "onnx": ens_onnx, "acc": None,
         "nonzero": _onnx_nonzero(ens_onnx)},
        {"name": FOLDED, "model": folded, "acc": accuracy(folded, data),
         "nonzero": folded.plan["nonzero"]},
    ]  # fmt: skip
    scores = [accuracy(member, data) for member in members]
    best = max(range(len(members)), key=scores.__getitem__)
    best_net, _ = prepare_member(members[best], torch.randn(1, *INPUT_SHAPE), compact=True)
    rows.append({"name": "best member (test), compacted", "model": best_net,
                 "acc": scores[best], "nonzero": _nonzero([best_net])})  # fmt: skip
    if not args.no_distill:
        rows.append(student_row(args, network, ensemble, seed))
    timings: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.rounds):
        for row in rows:
            for batch in BATCHES:
                kw = {"batch_size": batch, "repeats": args.repeats, "threads": args.threads}
                if "onnx" in row:
                    ms = measure_onnx_latency(row["onnx"], INPUT_SHAPE, **kw)["median_ms"]
                else:
                    ms = measure_latency(row["model"], INPUT_SHAPE, **kw)["median_ms"]
                timings.setdefault((row["name"], batch), []).append(ms)
    for row in rows:
        for batch in BATCHES:
            row[f"ms_b{batch}"] = statistics.median(timings[(row["name"], batch)])
        row["kb"] = row["onnx"].stat().st_size / 1024 if "onnx" in row else None
    sparsity = 1 - _nonzero(members) / (_nonzero([dense.net]) * len(members))
    plan = ", ".join(f"batch {b}: {layout}" for b, layout in
                     zip(fast.plan["batch_sizes"], fast.plan["layout"], strict=True))  # fmt: skip
    before, after = (sum(units) for units in zip(*fast.plan["hidden_units"], strict=True))
    removed = 100 * (1 - after / before)
    compacted = (f"{len(fast.plan['compacted'])} of {len(fast.plan['members'])} members "
                 f"compacted ({removed:.1f} % of hidden units removed)")  # fmt: skip
    note = (f"**{network}** seed {seed} ({CASES[network]['granularity']}): member sparsity "
            f"{100 * sparsity:.1f} % of weights; {compacted}; fast form built in "
            f"{build_s:.1f} s ({plan}); fast vs plain ensemble accuracy {acc_fast:.2f} vs "
            f"{acc_plain:.2f}; {time.perf_counter() - start:.0f} s for the case.")  # fmt: skip
    return rows, note


def _median_rows(per_seed: list[list[dict]]) -> list[dict]:
    """Each row's median over seeds (accuracy, nonzeros, size, latencies)."""
    out = []
    for rows in zip(*per_seed, strict=True):
        row = {"name": rows[0]["name"]}
        for key in ("acc", "nonzero", "kb", "ms_b1", "ms_b256"):
            values = [r[key] for r in rows if r[key] is not None]
            row[key] = statistics.median(values) if values else None
        out.append(row)
    return out


def table(results: dict[str, list[list[dict]]]) -> tuple[str, list[str]]:
    """The markdown table (medians over seeds) and the cost and accuracy targets, met or not."""
    lines = [
        "| network | model | test acc % | nonzero weights | ONNX KB | ms b1 | ms b256 | "
        "b1 vs dense | b256 vs dense |",
        "|---" * 9 + "|",
    ]
    verdicts = []
    for network, per_seed in results.items():
        rows = _median_rows(per_seed)
        dense = rows[0]
        for row in rows:
            base = rows[1] if "ONNX" in row["name"] else dense  # ORT rows vs the dense ORT model
            acc = "" if row["acc"] is None else f"{row['acc']:.2f}"
            kb = "" if row["kb"] is None else f"{row['kb']:.0f}"
            lines.append(
                f"| {network} | {row['name']} | {acc} | {row['nonzero']:,.0f} | {kb} | "
                f"{row['ms_b1']:.3f} | {row['ms_b256']:.2f} | "
                f"{row['ms_b1'] / base['ms_b1']:.2f}x | {row['ms_b256'] / base['ms_b256']:.2f}x |"
            )
        by_name = {row["name"]: row for row in rows}
        best = by_name["best member (test), compacted"]
        for label, fast in (("prob", by_name["fast ensemble"]), ("logprob", by_name[FOLDED])):
            checks = {
                "fast ensemble <= 1.0x dense at batch 1": fast["ms_b1"] <= dense["ms_b1"],
                "fast ensemble <= 1.0x dense at batch 256": fast["ms_b256"] <= dense["ms_b256"],
                f"ensemble >= dense + 1.0 ({fast['acc'] - dense['acc']:+.2f})":
                    fast["acc"] - dense["acc"] >= 1.0,
                f"ensemble >= best member + 0.5 ({fast['acc'] - best['acc']:+.2f})":
                    fast["acc"] - best["acc"] >= 0.5,
            }  # fmt: skip
            met = [f"{name}: {'met' if ok else 'NOT met'}" for name, ok in checks.items()]
            verdicts.append(f"**{network} targets, combine={label}**: " + "; ".join(met))
    return "\n".join(lines), verdicts


def main() -> None:
    args = parse_args()
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    results, notes = {}, []
    with tempfile.TemporaryDirectory(prefix="bench-ensemble-speed-") as tmp:
        for network in args.networks:
            results[network] = []
            for seed in args.seeds:
                rows, note = run_case(args, network, Path(tmp), seed)
                results[network].append(rows)
                print(note, flush=True)
                notes.append(note)
    split = "quick subset" if args.quick else f"{args.subset or 'all 55k'} training images"
    settings = (
        f"Fashion-MNIST ({split}), {args.epochs} epoch(s), Adam, batch 128, seeds "
        f"{args.seeds} (medians); "
        f"{args.members} pruned members per network (AdaptivePruning during training, "
        "controller off, the recipes of bench_ensembles.py: criterion, schedule, regrowth and "
        "learning rate 5e-4..2e-3 vary; dense at 1e-3), uniform weights, combine=prob "
        "(the default) and, on the same members, combine=logprob, whose fast form folds the "
        "weighted sum of logits into one last layer; CPU, "
        f"{args.threads} thread(s), median of {args.rounds} round(s) of {args.repeats} repeats. "
        "Torch rows are compared with the dense torch model, ONNX rows with the dense model "
        f"run by onnxruntime. Total {time.perf_counter() - start:.0f} s."
    )
    markdown, verdicts = table(results)
    text = "\n\n".join([markdown, *verdicts, settings, *notes])
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(f"# Ensemble inference cost\n\n{text}\n")
    print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    main()
