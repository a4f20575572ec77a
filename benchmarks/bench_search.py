"""Search benchmark: trial pruning on/off under one wall-clock budget, fairness of the
sparsity-matched pruner, and worker scaling. Prints markdown tables, writes
benchmarks/results/search.md (search_quick.md with --quick).

    .venv/bin/python benchmarks/bench_search.py            # ~22 minutes
    .venv/bin/python benchmarks/bench_search.py --quick    # smoke test, ~2 minutes

Setting: Fashion-MNIST subset, LeNet-300-100, demand sparsity >= 95%, the default search
space with target sparsity in [0.95, 0.99]. Both arms get the same seeds and budget
(`search.timeout`: no trial starts after it; the running one finishes).
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import optuna
from common import results_dir  # noqa: E402  (benchmarks/ is on sys.path)
from lightning_prune.search import TrialAttr, best_trials, curve_of, run_search
from lightning_prune.search.pruners import build_pruner
from optuna.trial import TrialState

from lightning_prune.config import load_config

RESULTS = results_dir()
PRUNER = load_config([]).search.pruner  # the defaults both arms and the replay use


def settings(quick: bool) -> dict:
    if quick:
        return dict(
            data=["data.subset=1000", "data.val_subset=500", "data.test_subset=500"],
            epochs=3,
            budget=25,
            seeds=[0],
            workers=[1, 2],
            scaling_budget=25,
            permutations=50,
        )
    return dict(
        data=["data.subset=10000", "data.val_subset=1000", "data.test_subset=2000"],
        epochs=10,
        budget=240,
        seeds=[0, 1],
        workers=[1, 2, 4],
        scaling_budget=90,
        permutations=200,
    )


def overrides(s: dict, folder: Path, seed: int, name: str, extra: list[str]) -> list[str]:
    return [
        "data=fashion_mnist",
        *s["data"],
        f"trainer.max_epochs={s['epochs']}",
        "trainer.enable_progress_bar=false",
        f"seed={seed}",
        f"output_dir={folder}/runs",
        f"tracking.uri=sqlite:///{folder}/mlflow.db",
        f"search.storage=sqlite:///{folder}/optuna.db",
        f"search.study_name={name}",
        "search.n_trials=10000",
        "search.progress=false",
        "search.demand.min_sparsity=0.95",
        "search.space.target_sparsity.low=0.95",
        "search.space.target_sparsity.high=0.99",
        "search.space.start.high=0.2",
        "search.space.end.low=0.3",
        "search.space.end.high=0.6",
        *extra,
    ]


def summarise(study: optuna.Study, wall: float) -> dict:
    trials = study.trials
    count = {s: sum(t.state == s for t in trials) for s in TrialState}
    evaluated = count[TrialState.COMPLETE] + count[TrialState.PRUNED]
    best = best_trials(study)
    return {
        "wall_s": wall,
        "finished": count[TrialState.COMPLETE],
        "pruned": count[TrialState.PRUNED],
        "failed": count[TrialState.FAIL],
        "epochs": sum(int(t.user_attrs.get(TrialAttr.EPOCHS, 0)) for t in trials),
        "trials_per_h": evaluated / wall * 3600,
        "best_val": best[0].user_attrs[TrialAttr.VAL_ACC] if best else None,
        "best_test": best[0].user_attrs.get(TrialAttr.TEST_ACC) if best else None,
        "best_trial": best[0].number if best else None,
        "fail_reasons": sorted(
            {
                str(t.user_attrs.get(TrialAttr.FAIL_REASON, ""))[:80]
                for t in trials
                if t.state == TrialState.FAIL
            }
        ),
        "curves": [
            (
                t.number,
                curve_of(t),
                t.user_attrs.get(TrialAttr.FEASIBLE),
                t.value,
            )
            for t in trials
            if t.state == TrialState.COMPLETE
        ],
    }


def run_arm(s: dict, seed: int, pruner: str, budget: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        extra = [f"search.pruner.kind={pruner}", f"search.timeout={budget}"]
        cfg = load_config(overrides(s, Path(tmp), seed, f"{pruner}-{seed}", extra))
        start = time.perf_counter()
        study = run_search(cfg)
        return summarise(study, time.perf_counter() - start)


POLICIES = {
    "plain median (MedianPruner), no care for sparsity": "median",
    "sparsity-matched median (default)": "matched",
}


def replay(curves: list, policy: str, permutations: int, seed: int):
    """Replay complete no-pruner trials through a pruner in random orders: how often is the
    eventual best feasible trial pruned, and how many trials are pruned on average."""
    feasible = [c for c in curves if c[2]]
    if not feasible:
        return float("nan"), float("nan")
    best = max(feasible, key=lambda c: c[3])[0]
    rng = random.Random(seed)
    best_pruned, pruned_total = 0, 0
    for _ in range(permutations):
        order = curves[:]
        rng.shuffle(order)
        pruner = build_pruner(policy, PRUNER.n_startup_trials, PRUNER.n_warmup_steps)
        study = optuna.create_study(direction="maximize", pruner=pruner)
        for number, curve, _, value in order:
            trial, pruned = study.ask(), False
            for step, point in enumerate(curve):
                trial.set_user_attr("curve", curve[: step + 1])
                trial.report(point["val_acc"], step)
                if trial.should_prune():
                    pruned = True
                    break
            study.tell(trial, state=TrialState.PRUNED) if pruned else study.tell(trial, value)
            pruned_total += pruned
            best_pruned += pruned and number == best
    return best_pruned / permutations, pruned_total / permutations


def scaling(s: dict, workers: int, budget: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        extra = [
            f"search.workers={workers}",
            f"search.timeout={budget}",
            f"search.storage=journal:///{tmp}/optuna.journal",
            "search.pruner.kind=none",
        ]
        cfg = load_config(overrides(s, Path(tmp), 0, f"scale-{workers}", extra))
        start = time.perf_counter()
        study = run_search(cfg)
        wall = time.perf_counter() - start
        done = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
        first = min((t.datetime_start for t in done), default=None)
        last = max((t.datetime_complete for t in done), default=None)
        span = (last - first).total_seconds() if done else float("nan")
        return {
            "workers": workers,
            "wall_s": wall,
            "trials": len(done),
            "per_min": len(done) / wall * 60,
            "steady_per_min": len(done) / span * 60,
            "startup_s": (first.timestamp() - (time.time() - wall)) if done else float("nan"),
        }


def _f(value, digits=4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke test (~2 minutes)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    s = settings(args.quick)
    lines = [
        f"# Search benchmark{' (quick)' if args.quick else ''}",
        "",
        f"Fashion-MNIST {' '.join(s['data'])}, LeNet-300-100, {s['epochs']} epochs per "
        f"trial, demand sparsity >= 0.95, budget {s['budget']} s per arm and seed, "
        "TPE sampler, 2 shared CPU cores.",
        "",
        "| arm | seed | wall s | finished | pruned | failed | epochs | trials/h "
        "| best feasible val_acc | its test_acc |",
        "|---" * 10 + "|",
    ]
    arms: dict[str, list[dict]] = {"matched": [], "none": []}
    for seed in s["seeds"]:
        for arm, kind in (("matched", "matched"), ("none", "none")):
            r = run_arm(s, seed, kind, s["budget"])
            arms[arm].append(r)
            lines.append(
                f"| pruner {arm} | {seed} | {r['wall_s']:.0f} | {r['finished']} | "
                f"{r['pruned']} | {r['failed']} | {r['epochs']} | "
                f"{r['trials_per_h']:.0f} | {_f(r['best_val'])} | {_f(r['best_test'])} |"
            )
            print(lines[-1], flush=True)
    reasons = sorted({x for rs in arms.values() for r in rs for x in r["fail_reasons"]})
    if reasons:
        lines += ["", "Failed trials: " + "; ".join(reasons)]
    med = {
        a: {
            k: statistics.median(r[k] for r in rs if r[k] is not None)
            for k in ("trials_per_h", "best_val", "best_test")
            if any(r[k] is not None for r in rs)
        }
        for a, rs in arms.items()
    }
    ratio = med["matched"]["trials_per_h"] / med["none"]["trials_per_h"]
    lines += [
        "",
        f"Median over seeds: trials/h with pruner / without = **{ratio:.2f}x**; "
        f"best feasible val_acc {_f(med['matched'].get('best_val'))} vs "
        f"{_f(med['none'].get('best_val'))}; test_acc "
        f"{_f(med['matched'].get('best_test'))} vs "
        f"{_f(med['none'].get('best_test'))}.",
        "",
    ]
    lines += [
        "## Fairness to high targets (replay of the no-pruner trials)",
        "",
        f"Every complete trial of the no-pruner arms replayed through each pruner "
        f"(n_startup_trials={PRUNER.n_startup_trials}, n_warmup_steps={PRUNER.n_warmup_steps}) "
        f"in {s['permutations']} random orders.",
        "",
        "| seed | policy | P(eventual best feasible trial pruned) | trials pruned (mean) |",
        "|---|---|---|---|",
    ]
    for seed, r in zip(s["seeds"], arms["none"], strict=True):
        n = len(r["curves"])
        for label, policy in POLICIES.items():
            p_best, mean_pruned = replay(r["curves"], policy, s["permutations"], seed)
            lines.append(f"| {seed} | {label} | {_f(p_best, 2)} | {mean_pruned:.1f} of {n} |")
            print(lines[-1], flush=True)
    lines += [
        "",
        "## Worker scaling (journal storage, no pruner)",
        "",
        "Wall time includes starting the worker processes (imports of torch, Lightning and "
        "MLflow); steady = trials / (last trial end - first trial start).",
        "",
        "| workers | wall s | start-up s | trials | trials/min (wall) | trials/min (steady) |",
        "|---|---|---|---|---|---|",
    ]
    for workers in s["workers"]:
        r = scaling(s, workers, s["scaling_budget"])
        lines.append(
            f"| {workers} | {r['wall_s']:.0f} | {r['startup_s']:.0f} | {r['trials']} | "
            f"{r['per_min']:.1f} | {r['steady_per_min']:.1f} |"
        )
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / ("search_quick.md" if args.quick else "search.md")
    out.write_text(text)
    print(f"written: {out}")


if __name__ == "__main__":
    main()
