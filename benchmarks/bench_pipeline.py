"""End to end: search under a demand, then the top-5 ensemble, against the best preset and
dense, on all 55k Fashion-MNIST training images (LeNet-300-100).

    .venv/bin/python benchmarks/bench_pipeline.py                  # ~45 min search + ~15 min
    .venv/bin/python benchmarks/bench_pipeline.py --budget 1500    # a shorter search
    .venv/bin/python benchmarks/bench_pipeline.py --quick          # smoke test, ~3 minutes

Steps, all with the same epochs, split and data:
1. `lightning-prune search` with `search.demand.min_sparsity=0.95`, the default space (shaped
   by the demand) and the default trial pruner, two workers, until `--budget` seconds.
2. `lightning-prune ensemble` of its top 5 (optimized weights fitted on validation data).
3. Every preset that takes a target, trained once per seed at the demanded sparsity; the best
   by validation accuracy is "best preset".
4. Dense, at three learning rates per seed; the best by validation accuracy is "dense".

Targets: best trial >= best preset; ensemble >= best member + 0.5 points and
>= dense + 1.0 point (test accuracy). Writes benchmarks/results/pipeline.md (pipeline_quick.md
with --quick) and prints the same markdown.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

from common import results_dir  # noqa: E402  (benchmarks/ is on sys.path)
from lightning_prune.ensembles.run import run_ensemble
from lightning_prune.search import TrialAttr, best_trials, run_search
from lightning_prune.search.pruners import stop_kind
from optuna.trial import TrialState

from lightning_prune.config import load_config
from lightning_prune.train import fit_and_test

DEMAND = 0.95
PRESETS = ("hybrid_adaptive", "magnitude_gradual", "taylor_adaptive", "dns")
DENSE_LRS = (0.0005, 0.001, 0.002)


def settings(quick: bool, budget: float | None, seeds: list[int]) -> dict:
    if quick:
        data = ["data.subset=2000", "data.val_subset=1000", "data.test_subset=1000"]
        return dict(data=data, epochs=1, budget=budget or 20, seeds=seeds[:1], file="_quick")
    return dict(data=[], epochs=10, budget=budget or 2700, seeds=seeds, file="")


def base(s: dict, folder: Path, seed: int) -> list[str]:
    return [
        "data=fashion_mnist", *s["data"], f"trainer.max_epochs={s['epochs']}",
        "trainer.enable_progress_bar=false", f"seed={seed}", f"output_dir={folder}/runs",
        f"tracking.uri=sqlite:///{folder}/mlflow.db",
    ]  # fmt: skip


def search_and_ensemble(s: dict, folder: Path, seed: int) -> dict:
    study_args = [f"search.storage=journal:///{folder}/optuna.journal", "search.study_name=pipe"]
    cfg = load_config([
        *base(s, folder, seed), *study_args, "search.workers=2", "search.n_trials=10000",
        f"search.timeout={s['budget']}", f"search.demand.min_sparsity={DEMAND}",
        "search.progress=false",
    ])  # fmt: skip
    start = time.perf_counter()
    study = run_search(cfg)
    search_s = time.perf_counter() - start
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    stopped = [t for t in trials if t.state == TrialState.PRUNED]
    best = best_trials(study)[0]
    cfg_ens = load_config([*base(s, folder, seed), *study_args, "ensemble.k=5"])
    result = run_ensemble(cfg_ens)
    members = [m.name for m in result.members]
    recipes = {m.trial: m.params for m in result.members}
    return {
        "search_s": search_s,
        "trials": len([t for t in trials if t.state.is_finished()]),
        "complete": len(complete),
        "stopped": len(stopped),
        "stop_kinds": Counter(
            stop_kind(t.user_attrs.get(TrialAttr.PRUNED_REASON)) for t in stopped
        ),
        "infeasible": sum(not t.user_attrs.get(TrialAttr.FEASIBLE) for t in complete),
        "failed": sum(t.state == TrialState.FAIL for t in trials),
        "best_trial": best.number,
        "best_test": best.user_attrs[TrialAttr.TEST_ACC],
        "best_sparsity": best.user_attrs[TrialAttr.SPARSITY],
        "ensemble_test": result.report.ensemble["test_acc"],
        "best_member_test": result.report.best_member["test_acc"],
        "members": members,
        "weights": [round(float(w), 3) for w in result.ensemble.weights],
        "recipes": recipes,
    }


def train_once(s: dict, folder: Path, seed: int, extra: list[str]) -> tuple[float, float]:
    result = fit_and_test(load_config([*base(s, folder, seed), *extra]))
    return result.metrics["val_acc"], result.metrics["test_acc"]


def best_preset(s: dict, folder: Path, seed: int) -> tuple[str, float, dict]:
    scores = {}
    for preset in PRESETS:
        extra = [f"pruning={preset}", f"pruning.target_sparsity={DEMAND}", "pruning.verbose=false"]
        scores[preset] = train_once(s, folder, seed, extra)
        print(f"  preset {preset} seed {seed}: val/test {scores[preset]}", flush=True)
    name = max(scores, key=lambda p: scores[p][0])
    return name, scores[name][1], scores


def best_dense(s: dict, folder: Path, seed: int) -> tuple[float, float]:
    scores = {lr: train_once(s, folder, seed, ["pruning=none", f"model.lr={lr}"])
              for lr in DENSE_LRS}  # fmt: skip
    lr = max(scores, key=lambda k: scores[k][0])
    print(f"  dense seed {seed}: {scores}", flush=True)
    return lr, scores[lr][1]


def table(run: dict, presets: list, dense: list, s: dict) -> str:
    pct = lambda x: f"{100 * x:.2f}"  # noqa: E731
    preset_test = statistics.median(p[1] for p in presets)
    dense_test = statistics.median(d[1] for d in dense)
    seeds = ", ".join(map(str, s["seeds"]))
    rows = [
        ("best trial (search)", pct(run["best_test"]),
         f"trial {run['best_trial']}, sparsity {run['best_sparsity']:.3f}"),
        ("best preset, trained once", pct(preset_test),
         "; ".join(f"seed {sd}: {p[0]}" for sd, p in zip(s["seeds"], presets, strict=True))),
        ("top-5 ensemble", pct(run["ensemble_test"]), f"weights {run['weights']}"),
        ("its best member", pct(run["best_member_test"]), "best of the 5 on test"),
        ("dense (best lr)", pct(dense_test),
         "; ".join(f"seed {sd}: lr {d[0]}" for sd, d in zip(s["seeds"], dense, strict=True))),
    ]  # fmt: skip
    checks = [
        ("best trial >= best preset", run["best_test"] - preset_test, 0.0),
        ("ensemble >= best member + 0.5", run["ensemble_test"] - run["best_member_test"], 0.005),
        ("ensemble >= dense + 1.0", run["ensemble_test"] - dense_test, 0.010),
    ]
    kinds = ", ".join(f"{k}: {n}" for k, n in run["stop_kinds"].most_common()) or "none"
    lines = [
        f"Search: {run['search_s'] / 60:.1f} min, 2 workers, demand sparsity >= {DEMAND}, "
        f"{s['epochs']} epochs per trial; presets and dense: median over seeds {seeds}.",
        "", "| model | test acc % | notes |", "|---|---:|---|",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
        "", "| target | margin (points) | met |", "|---|---:|---|",
        *[f"| {name} | {100 * m:+.2f} | {'yes' if m >= need - 1e-12 else 'no'} |"
          for name, m, need in checks],
        "", f"Trials finished: {run['trials']} ({run['complete']} complete, of them "
        f"{run['infeasible']} infeasible; {run['stopped']} stopped early; {run['failed']} "
        f"failed). Stops by reason: {kinds}.", "", "Members' recipes:", "",
        *[f"- trial {n}: {p}" for n, p in run["recipes"].items()],
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--budget", type=float, default=None, help="search seconds")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--keep", type=Path, default=None, help="work here, and keep it")
    args = parser.parse_args()
    s = settings(args.quick, args.budget, args.seeds)
    warnings.filterwarnings("ignore")
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        folder = args.keep or Path(tmp)
        run = search_and_ensemble(s, folder / "search", s["seeds"][0])
        print(f"search done: {run['trials']} trials in {run['search_s']:.0f} s", flush=True)
        presets = [best_preset(s, folder / f"preset{sd}", sd) for sd in s["seeds"]]
        dense = [best_dense(s, folder / f"dense{sd}", sd) for sd in s["seeds"]]
    text = table(run, [(p[0], p[1]) for p in presets], dense, s)
    print(text)
    (results_dir() / f"pipeline{s['file']}.md").write_text(text)


if __name__ == "__main__":
    main()
