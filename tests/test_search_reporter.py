"""The trial reporter with real Optuna pruners and real Lightning training."""

from __future__ import annotations

import optuna
from lightning_prune.search.reporter import TrialReporter
from optuna.trial import TrialState

from lightning_prune.config import load_config
from lightning_prune.train import build_components, fit_and_test

BASE = [
    "data=synthetic",
    "data.num_train=256",
    "data.num_val=64",
    "data.num_test=64",
    "trainer.enable_progress_bar=false",
]


def _fit(trial: optuna.Trial, overrides: list[str]) -> TrialReporter:
    cfg = load_config([*BASE, *overrides])
    components = build_components(cfg)
    reporter = TrialReporter(trial, pruning=components[2])
    fit_and_test(cfg, callbacks=[reporter], components=components, test=False)
    return reporter


def test_pruner_stops_a_bad_trial_cleanly_after_fit():
    study = optuna.create_study(
        direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1)
    )
    good = study.ask()
    reporter = _fit(good, ["trainer.max_epochs=4", "model.lr=0.001"])
    assert reporter.pruned_at is None and len(reporter.curve) == 4
    study.tell(good, reporter.curve[-1]["val_acc"])

    bad = study.ask()
    reporter = _fit(bad, ["trainer.max_epochs=4", "model.lr=1e-7"])
    assert reporter.pruned_at is not None
    assert len(reporter.curve) < 4  # the Trainer stopped early, fit returned normally
    study.tell(bad, state=TrialState.PRUNED)
    assert study.trials[1].state == TrialState.PRUNED
    # Steps are validation indices: the first validation is step 0.
    assert set(study.trials[1].intermediate_values) == {0}
    assert reporter.pruned_at == reporter.curve[0]["step"]


def test_reports_every_validation_with_its_sparsity_in_the_live_curve():
    prune = [
        "+pruning._target_=lightning_prune.pruning.AdaptivePruning",
        "+pruning.target_sparsity=0.9",
        "+pruning.start=0.0",
        "+pruning.end=0.6",
        "+pruning.frequency=2",
        "+pruning.verbose=false",
        "trainer.max_epochs=3",
    ]
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    reporter = _fit(trial, prune)
    frozen = study._storage.get_trial(trial._trial_id)
    assert frozen.intermediate_values == {k: p["val_acc"] for k, p in enumerate(reporter.curve)}
    sparsities = [p["sparsity"] for p in frozen.user_attrs["curve"]]
    assert len(sparsities) == 3 and sparsities[0] < sparsities[-1]
    assert abs(sparsities[-1] - 0.9) < 0.01
