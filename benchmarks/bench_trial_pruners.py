"""Which trial-pruning rule keeps the best trial: replay of complete no-pruner trials.

Phase 1 (`--collect`, ~1 h on 2 cores): searches with no trial pruner on all 55k
Fashion-MNIST training images, LeNet-300-100, demand sparsity >= 0.95; every trial runs to
the end. Its curves (val_acc, sparsity and ramp progress per validation), final val/test
accuracy and feasibility go to benchmarks/results/pruner_curves.json.

Phase 2 (default): every rule of `lightning_prune.search.pruners` replays those trials in
random orders (as they would arrive in a study) and is scored by
- P(best stopped): how often the eventual best feasible trial (by val_acc) is stopped;
- trials/h: trials judged per hour of training relative to no pruner (epochs saved);
- best test: test accuracy of the best feasible trial the rule let finish, median over
  orders, against the no-pruner arm's.
Writes benchmarks/results/pruner_replay.md.

    .venv/bin/python benchmarks/bench_trial_pruners.py --collect --seeds 0 1 --trials 30
    .venv/bin/python benchmarks/bench_trial_pruners.py
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import tempfile
import warnings

import optuna
from common import results_dir  # noqa: E402  (benchmarks/ is on sys.path)
from lightning_prune.search import TrialAttr, curve_of, run_search
from lightning_prune.search.demand import shape_space
from lightning_prune.search.pruners import build_pruner
from optuna.trial import TrialState

from lightning_prune.config import load_config

RESULTS = results_dir()
CURVES = RESULTS / "pruner_curves.json"
DEMAND = 0.95
RULES = ("matched", "bound", "median", "halving", "hyperband", "none")


def collect(seeds: list[int], trials: int, epochs: int) -> None:
    """Run the no-pruner searches and store every complete trial's curve."""
    studies = []
    for seed in seeds:
        with tempfile.TemporaryDirectory(prefix="bench-pruners-") as tmp:
            cfg = load_config(
                [
                    f"seed={seed}",
                    f"trainer.max_epochs={epochs}",
                    "+trainer.val_check_interval=0.5",
                    "trainer.enable_progress_bar=false",
                    f"output_dir={tmp}/runs",
                    f"tracking.uri=sqlite:///{tmp}/mlflow.db",
                    f"search.storage=sqlite:///{tmp}/optuna.db",
                    f"search.n_trials={trials}",
                    "search.progress=false",
                    "search.dense_reference=false",
                    "search.pruner.kind=none",
                    f"search.demand.min_sparsity={DEMAND}",
                ]
            )
            cfg, notes = shape_space(cfg)
            print("\n".join(notes), flush=True)
            study = run_search(cfg)
            rows = [
                {
                    "number": t.number,
                    "params": t.params,
                    "curve": curve_of(t),
                    "val_acc": t.user_attrs.get(TrialAttr.VAL_ACC),
                    "test_acc": t.user_attrs.get(TrialAttr.TEST_ACC),
                    "feasible": bool(t.user_attrs.get(TrialAttr.FEASIBLE)),
                }
                for t in study.get_trials(states=(TrialState.COMPLETE,))
            ]
            studies.append({"seed": seed, "epochs": epochs, "trials": rows})
            print(f"seed {seed}: {len(rows)} complete trials", flush=True)
    CURVES.write_text(json.dumps({"demand": DEMAND, "studies": studies}, indent=1))
    print(f"written: {CURVES}")


def replay_once(rows: list[dict], rule: str, order_seed: int) -> tuple[set[int], int]:
    """One random arrival order through `rule`: (stopped trial numbers, epochs spent)."""
    order = rows[:]
    random.Random(order_seed).shuffle(order)
    study = optuna.create_study(direction="maximize", pruner=build_pruner(rule, 4, 0))
    stopped, epochs = set(), 0
    for row in order:
        trial = study.ask()
        curve, done = row["curve"], True
        for step, point in enumerate(curve):
            epochs += 1
            trial.set_user_attr(TrialAttr.CURVE, curve[: step + 1])
            trial.report(point["val_acc"], step)
            if trial.should_prune():
                done = False
                break
        trial.set_constraint("min_sparsity", 0.0 if row["feasible"] else 1.0)
        if done:
            study.tell(trial, row["val_acc"])
        else:
            study.tell(trial, state=TrialState.PRUNED)
            stopped.add(row["number"])
    return stopped, epochs


def score(rows: list[dict], rule: str, orders: int) -> dict:
    feasible = [r for r in rows if r["feasible"]]
    best = max(feasible, key=lambda r: r["val_acc"])
    full_epochs = sum(len(r["curve"]) for r in rows)
    p_best, speed, best_test, stops = 0, [], [], []
    for k in range(orders):
        stopped, epochs = replay_once(rows, rule, k)
        p_best += best["number"] in stopped
        speed.append(full_epochs / max(epochs, 1))
        finished = [r for r in feasible if r["number"] not in stopped]
        best_test.append(max(finished, key=lambda r: r["val_acc"])["test_acc"])
        stops.append(len(stopped))
    return {
        "p_best": p_best / orders,
        "speed": statistics.median(speed),
        "best_test": statistics.median(best_test),
        "stopped": statistics.mean(stops),
        "full_best_test": best["test_acc"],
        "n": len(rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collect", action="store_true", help="run the no-pruner searches")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--orders", type=int, default=200, help="random arrival orders")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if args.collect:
        collect(args.seeds, args.trials, args.epochs)
    data = json.loads(CURVES.read_text())
    lines = [
        "# Trial pruners replayed on complete no-pruner trials",
        "",
        f"All 55k Fashion-MNIST training images, LeNet-300-100, demand sparsity >= "
        f"{data['demand']}, {args.orders} random arrival orders per study; 4 startup trials. "
        "P(best stopped): the eventual best feasible trial is stopped. Trials/h: relative to "
        "no pruner (epochs saved). Best test: test accuracy of the best feasible trial the "
        "rule let finish (median over orders) vs the no-pruner arm's.",
        "",
        "| study seed | trials | rule | P(best stopped) | trials/h vs none | stopped (mean) "
        "| best test | no-pruner best test |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for study in data["studies"]:
        for rule in RULES:
            r = score(study["trials"], rule, args.orders)
            lines.append(
                f"| {study['seed']} | {r['n']} | {rule} | {r['p_best']:.2f} | "
                f"{r['speed']:.2f}x | {r['stopped']:.1f} | {r['best_test']:.4f} | "
                f"{r['full_best_test']:.4f} |"
            )
            print(lines[-1], flush=True)
    out = RESULTS / "pruner_replay.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
