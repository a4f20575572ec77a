"""Ensembles of pruned LeNet-300-100 models vs their best member vs one dense model.

Fashion-MNIST. Per seed: train `--members` pruned LeNet-300-100 models (96% sparse,
recipes varying criterion / schedule / regrowth / learning rate, each with its own init
and data order, all on the same train/val/test split) with the `AdaptivePruning` callback
directly (not through the search), record them as finished trials of a real Optuna study, select the
top-k by validation accuracy, fit each weighting rule on validation data, and test.
The dense model is trained for the same epochs on the same split, with the members' best
learning rate (by validation accuracy).

    python benchmarks/bench_ensembles.py            # full data, 8 epochs, 3 seeds
    python benchmarks/bench_ensembles.py --quick    # smoke test (< 1 min)

Prints a markdown table and writes benchmarks/results/ensembles.md.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import optuna
import torch
from common import results_dir  # noqa: E402  (benchmarks/ is on sys.path)
from lightning_prune.ensembles import (
    WEIGHTINGS,
    evaluate_ensemble,
    fit_ensemble,
    select_members,
)
from lightning_prune.ensembles.run import run_ensemble
from lightning_prune.search import TrialAttr, run_search
from optuna.trial import TrialState

from lightning_prune.checkpoint import save_model
from lightning_prune.config import load_config
from lightning_prune.pruning import AdaptivePruning
from lightning_prune.train import build_components, fit_and_test

RESULTS = results_dir()
SPARSITY = 0.96  # 4% of the weights per member (+ biases): five members < 25% of one dense model
# Top trials of a search differ in recipe and learning rate; the members mirror that.
RECIPES = [
    {"criterion": "taylor", "schedule": "cubic", "regrowth": "none", "lr": 1e-3},
    {"criterion": "magnitude", "schedule": "cubic", "regrowth": "none", "lr": 2e-3},
    {"criterion": "magnitude", "schedule": "linear", "regrowth": "rigl", "lr": 1e-3},
    {"criterion": "taylor", "schedule": "cubic", "regrowth": "rigl", "lr": 2e-3},
    {"criterion": "magnitude", "schedule": "cubic", "regrowth": "rigl", "lr": 5e-4},
    {"criterion": "taylor", "schedule": "linear", "regrowth": "none", "lr": 1e-3},
    {"criterion": "gradient", "schedule": "cubic", "regrowth": "none", "lr": 1e-3},
    {"criterion": "magnitude", "schedule": "linear", "regrowth": "none", "lr": 2e-3},
]
TRAINER = {"enable_progress_bar": False, "enable_model_summary": False}


def _quiet() -> None:
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _overrides(args: argparse.Namespace, split_seed: int, model_seed: int) -> list[str]:
    """Same data split (data.seed) for every model of a seed; own init/order (seed)."""
    data = [f"data.subset={args.subset}", "data.val_subset=1000", "data.test_subset=2000"]
    return [
        f"seed={model_seed}", f"data.seed={split_seed}",
        f"trainer.max_epochs={args.epochs}", *(data if args.quick else []),
    ]  # fmt: skip


def train_dense(args: argparse.Namespace, seed: int) -> float:
    """Test accuracy of the dense model with the members' best learning rate (by val_acc)."""
    results = []
    for lr in sorted({r["lr"] for r in RECIPES}):
        cfg = load_config([*_overrides(args, seed, seed), f"model.lr={lr}"])
        metrics = fit_and_test(cfg, trainer_overrides=TRAINER).metrics
        results.append((metrics["val_acc"], metrics["test_acc"]))
    return max(results)[1]


def train_members(args: argparse.Namespace, seed: int, folder: Path) -> optuna.Study:
    """Pruned members as finished trials of a real study (user attrs as the search records)."""
    study = optuna.create_study(
        study_name=f"bench-{seed}", storage=f"sqlite:///{folder / 'optuna.db'}",
        direction="maximize",
    )  # fmt: skip
    for j in range(args.members):
        recipe = RECIPES[j % len(RECIPES)]
        pruning = {k: v for k, v in recipe.items() if k != "lr"}
        member_seed = 1000 * (seed + 1) + j
        cfg = load_config([*_overrides(args, seed, member_seed), f"model.lr={recipe['lr']}"])
        datamodule, model, _ = build_components(cfg)
        datamodule.prepare_data()
        datamodule.setup("fit")  # the split comes from data.seed (shared by all models) ...
        datamodule.seed = member_seed  # ... the shuffling order from this member's own seed
        callback = AdaptivePruning(target_sparsity=SPARSITY, monitor=None, verbose=False, **pruning)
        result = fit_and_test(cfg, callbacks=[callback], trainer_overrides=TRAINER, test=False,
                              components=(datamodule, model, None))  # fmt: skip
        summary = callback.summary()
        path = save_model(folder / f"member-{j}" / "model.pt", result.model, cfg.model, {})
        attrs = {TrialAttr.CHECKPOINT: str(path.resolve()),
                 TrialAttr.VAL_ACC: result.metrics["val_acc"],
                 TrialAttr.SPARSITY: summary["sparsity"],
                 TrialAttr.NONZERO_PARAMS: summary["nonzero_params"],
                 TrialAttr.FLOPS: summary["flops"], TrialAttr.MLFLOW_RUN_ID: None,
                 TrialAttr.TEST_ACC: None}  # fmt: skip
        study.add_trial(optuna.trial.create_trial(
            value=result.metrics["val_acc"], user_attrs=attrs,
            params=recipe, distributions={k: optuna.distributions.CategoricalDistribution(
                sorted({r[k] for r in RECIPES})) for k in recipe},
        ))  # fmt: skip
        print(f"  seed {seed} member {j} {recipe}: val_acc {result.metrics['val_acc']:.4f}, "
              f"sparsity {summary['sparsity']:.3f}, {result.seconds:.0f}s", flush=True)  # fmt: skip
    return study


def search_members(args: argparse.Namespace, seed: int, folder: Path) -> dict[str, float]:
    """As a user does: `lightning-prune search` at 96 % unstructured sparsity (recipe and
    learning rate searched), then `lightning-prune ensemble` of its top-k with the optimized
    weights and a distilled student; test accuracies in %."""
    study = [f"search.storage=journal:///{folder}/optuna.journal", "search.study_name=members",
             f"tracking.uri=sqlite:///{folder}/mlflow.db", f"output_dir={folder}/runs",
             f"paths.root={folder}", "trainer.enable_progress_bar=false"]  # fmt: skip
    cfg = load_config([
        *_overrides(args, seed, seed), *study, f"search.n_trials={args.search_trials}",
        "search.workers=2", "search.progress=false",
        "search.space.granularity.choices=[unstructured]",
        "~search.space.target_sparsity",
        f"+search.space.target_sparsity={{target: pruning.target_sparsity, choices: [{SPARSITY}]}}",
    ])  # fmt: skip
    start = time.perf_counter()
    trials = run_search(cfg).get_trials(deepcopy=False)
    searched = time.perf_counter() - start
    result = run_ensemble(load_config([
        *_overrides(args, seed, seed), *study, f"ensemble.k={args.k}", "ensemble.distill=true",
        f"ensemble.distill_epochs={args.epochs}",
    ]))  # fmt: skip
    diverse = run_ensemble(load_config([
        *_overrides(args, seed, seed), *study, f"ensemble.k={args.k}",
        "ensemble.diversity=agreement", "ensemble.log_mlflow=false",
    ]))  # fmt: skip
    geometric = run_ensemble(load_config([
        *_overrides(args, seed, seed), *study, f"ensemble.k={args.k}",
        "ensemble.combine=logprob", "ensemble.log_mlflow=false",
    ]))  # fmt: skip
    states = [t.state for t in trials]
    print(f"  seed {seed} search: {len(trials)} trials in {searched:.0f}s; ensemble "
          f"{result.report.ensemble['test_acc']:.4f}", flush=True)  # fmt: skip
    assert result.distilled is not None
    return {
        "search: ensemble, optimized": 100 * result.report.ensemble["test_acc"],
        "search: ensemble, optimized, diverse (agreement)": 100
        * diverse.report.ensemble["test_acc"],
        "search: ensemble, optimized, combine=logprob": 100 * geometric.report.ensemble["test_acc"],
        "search: best member (test, oracle)": 100 * result.report.best_member["test_acc"],
        "search: distilled student": 100 * result.distilled.test_acc,
        "search: student sparsity (%)": 100 * result.distilled.sparsity,
        "search: trials complete": states.count(TrialState.COMPLETE),
        "search: trials stopped early": states.count(TrialState.PRUNED),
        "search: minutes searched": searched / 60,
    }


def run_seed(args: argparse.Namespace, seed: int) -> dict[str, float]:
    """Test accuracies (%) of dense, best member and each weighting rule for one seed."""
    with tempfile.TemporaryDirectory(prefix="bench-ensembles-", dir=args.workdir) as tmp:
        row = {"dense model": 100 * train_dense(args, seed)}
        if args.members_from in ("search", "both"):
            row.update(search_members(args, seed, Path(tmp) / "search"))
        if args.members_from == "search":
            return row
        study = train_members(args, seed, Path(tmp))
        cfg = load_config(_overrides(args, seed, seed))
        datamodule, _, _ = build_components(cfg)
        datamodule.prepare_data()
        datamodule.setup("fit")
        selection = select_members(study, args.k)
        names = [m.name for m in selection.members]
        for weighting in WEIGHTINGS:
            ensemble = fit_ensemble(selection.members, datamodule.val_dataloader(), weighting)
            datamodule.setup("test")
            report = evaluate_ensemble(ensemble, datamodule.test_dataloader(), names,
                                       latency_repeats=5)  # fmt: skip
            row[f"ensemble, {weighting}"] = 100 * report.ensemble["test_acc"]
        diverse = select_members(study, args.k, diversity="agreement",
                                 val_loader=datamodule.val_dataloader())  # fmt: skip
        ensemble = fit_ensemble(diverse.members, datamodule.val_dataloader(), "optimized")
        names = [m.name for m in diverse.members]
        diverse_report = evaluate_ensemble(ensemble, datamodule.test_dataloader(), names,
                                           latency_repeats=1)  # fmt: skip
        row["ensemble, optimized, diverse (agreement)"] = 100 * diverse_report.ensemble["test_acc"]
        row["best member (test, oracle)"] = 100 * report.best_member["test_acc"]
        val_best = max(selection.members, key=lambda m: m.values[0])
        row["best member (by val)"] = next(
            100 * r["test_acc"] for r in report.rows if r["name"] == val_best.name
        )
        kept = sum(r["nonzero_params"] for r in report.rows)
        row["params of k members / dense (%)"] = 100 * kept / report.costs["dense_params"]
        row["latency ms, batch 256 (ensemble)"] = report.costs["latency_ms"]
        row["latency ms, batch 256 (dense)"] = report.costs["dense_latency_ms"]
    return row


def _table_row(key: str, values: list[float]) -> str:
    signed = key.removeprefix("search: ").startswith("gain")
    form = "{:+.2f}" if signed else ("{:.0f}" if "trials" in key else "{:.2f}")
    cells = " | ".join(form.format(v) for v in values)
    return f"| {key} | {cells} | {form.format(statistics.median(values))} |"


def with_gains(rows: list[dict[str, float]]) -> list[dict[str, float]]:
    """Per-seed paired gains (same split, same members) of each rule over the baselines."""
    out = []
    for row in rows:
        gains = {}
        if "search: ensemble, optimized" in row:
            ens, student = row["search: ensemble, optimized"], row["search: distilled student"]
            gains["search: gain over best member"] = ens - row["search: best member (test, oracle)"]
            gains["search: gain over dense"] = ens - row["dense model"]
            diverse = row["search: ensemble, optimized, diverse (agreement)"]
            gains["search: gain over dense, diverse"] = diverse - row["dense model"]
            geometric = row["search: ensemble, optimized, combine=logprob"]
            gains["search: gain of logprob over prob"] = geometric - ens
            gains["search: gain of student over dense"] = student - row["dense model"]
            gains["search: gain of student over ensemble"] = student - ens
        for rule in WEIGHTINGS if "ensemble, uniform" in row else ():
            ens = row[f"ensemble, {rule}"]
            gains[f"gain over best member, {rule}"] = ens - row["best member (test, oracle)"]
            gains[f"gain over dense, {rule}"] = ens - row["dense model"]
        out.append({**row, **gains})
    return out


def search_summary(median: dict[str, float], args: argparse.Namespace) -> list[str]:
    """The members-from-search lines under the table: the ensemble targets, met or not."""
    if "search: gain over dense" not in median:
        return []
    over_best, over_dense = (
        median["search: gain over best member"],
        median["search: gain over dense"],
    )
    student = median["search: gain of student over ensemble"]
    return [
        f"Members from `lightning-prune search` ({args.search_trials} trials per seed, 2 "
        f"workers, target sparsity fixed at {SPARSITY:.0%}, unstructured; criterion, schedule, "
        "frequency, tolerance, regrowth and learning rate searched; default trial pruner), "
        f"ensembled by `lightning-prune ensemble ensemble.k={args.k} ensemble.distill=true`: "
        f"median per-seed gain {over_best:+.2f} points over its best member (target >= +0.5: "
        f"{'met' if over_best >= 0.5 else 'NOT met'}), {over_dense:+.2f} over dense (target "
        f">= +1.0: {'met' if over_dense >= 1.0 else 'NOT met'}). The distilled student (one "
        f"member's cost) is {student:+.2f} points from the ensemble.",
    ]


def markdown(rows: list[dict[str, float]], seeds: list[int], args: argparse.Namespace) -> str:
    rows = with_gains(rows)
    header = "| | " + " | ".join(f"seed {s}" for s in seeds) + " | median |"
    lines = [header, "|---" * (len(seeds) + 2) + "|"]
    lines += [_table_row(key, [r[key] for r in rows]) for key in rows[0]]
    median = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    split = "(quick subset)" if args.quick else "(55k train / 5k val / 10k test)"
    lines += ["", *search_summary(median, args)]
    if "ensemble, uniform" not in median:
        return "\n".join([*lines, "", f"Settings: Fashion-MNIST {split}, LeNet-300-100, "
                          f"{args.epochs} epochs, Adam, batch 128."])  # fmt: skip
    best_rule = max(WEIGHTINGS, key=lambda w: median[f"ensemble, {w}"])
    paired = median[f"gain over best member, {best_rule}"]
    of_medians = median[f"ensemble, {best_rule}"] - median["best member (test, oracle)"]
    over_dense = median[f"gain over dense, {best_rule}"]
    lines += [
        "",
        f"Best rule (median accuracy): **{best_rule}**. Over the best member (chosen on test: an "
        f"upper bound for any single member): median per-seed gain {paired:+.2f} points, "
        f"difference of the medians {of_medians:+.2f}. Over the dense model: median per-seed "
        f"gain {over_dense:+.2f}. Target >= +0.5 over the best member: "
        f"{'met' if paired >= 0.5 else 'NOT met'} on the paired per-seed gain, "
        f"{'met' if of_medians >= 0.5 else 'NOT met'} on the difference of medians; "
        f"above the dense model: {'met' if over_dense > 0 else 'NOT met'}.",
        "",
        f"Settings: Fashion-MNIST {split}, "
        f"LeNet-300-100, {args.epochs} epochs, Adam, batch 128; {args.members} pruned members "
        f"per seed at {SPARSITY:.0%} weight sparsity (AdaptivePruning, recipes varying criterion / "
        "schedule / regrowth / learning rate 5e-4..2e-3; own init and data order, shared split), "
        f"top-{args.k} by validation accuracy; weights fitted on the validation split only; "
        "test accuracy in %. The dense model is trained with each of those learning rates and "
        "the best by validation accuracy is kept. Members trained directly (not via the "
        "search), with the metric controller off (monitor=None) so each keeps its sparsity.",
    ]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny subset, 1 epoch, 1 seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--members", type=int, default=8, help="pruned models trained per seed")
    parser.add_argument("--k", type=int, default=5, help="ensemble size (top-k by val_acc)")
    parser.add_argument("--subset", type=int, default=2000, help="training images in --quick")
    parser.add_argument("--workdir", default=None, help="folder for members (default: tmp)")
    parser.add_argument(
        "--members-from",
        choices=["direct", "search", "both"],
        default="both",
        help="members trained directly, by `lightning-prune search`, or both",
    )
    parser.add_argument("--search-trials", type=int, default=12, help="trials per seed's search")
    parser.add_argument("--out", type=Path, default=None, help="default results/ensembles.md")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.epochs, args.members, args.k = args.seeds[:1], 1, 3, 3
        args.search_trials = 4
    args.out = args.out or RESULTS / ("ensembles-quick.md" if args.quick else "ensembles.md")
    _quiet()
    torch.set_num_threads(1)  # 2 threads on a shared 2-core machine run ~10x slower
    start = time.perf_counter()
    rows = [run_seed(args, seed) for seed in args.seeds]
    text = markdown(rows, args.seeds, args)
    seconds = time.perf_counter() - start
    text += f" Wall time {seconds:.0f} s (2 shared CPU cores, 1 torch thread)."
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(f"# Ensembles of pruned models\n\n{text}\n")
    print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    main()
