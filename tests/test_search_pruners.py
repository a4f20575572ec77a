"""SparsityMatchedPruner on a real Optuna study: judged only against trials as sparse as it."""

from __future__ import annotations

import optuna
import pytest
from lightning_prune.search.pruners import SparsityMatchedPruner, build_pruner
from optuna.trial import TrialState


def _completed(study: optuna.Study, values: list[float], sparsities: list[float]) -> None:
    trial = study.ask()
    curve = [{"sparsity": s, "val_acc": v} for v, s in zip(values, sparsities, strict=True)]
    trial.set_user_attr("curve", curve)
    for step, value in enumerate(values):
        trial.report(value, step)
    study.tell(trial, values[-1])


def _study(tmp_path) -> optuna.Study:
    study = optuna.create_study(
        storage=f"sqlite:///{tmp_path / 'optuna.db'}",
        direction="maximize",
        pruner=SparsityMatchedPruner(n_startup_trials=3, n_warmup_steps=0, n_min_trials=3),
    )
    # Three finished trials that pruned slowly: 50 % sparse at validation 1, 95 % at the end.
    for offset in (0.0, 0.01, 0.02):
        _completed(study, [0.80 + offset, 0.82 + offset, 0.85 + offset], [0.0, 0.5, 0.95])
    return study


def _report(study: optuna.Study, value: float, sparsity: float, step: int, curve: list):
    trial = study.ask()
    curve = [*curve, {"sparsity": sparsity, "val_acc": value}]
    trial.set_user_attr("curve", curve)
    for k, point in enumerate(curve):
        trial.report(point["val_acc"], k)
    return trial.should_prune()


def test_a_trial_sparser_than_every_finished_one_is_not_judged(tmp_path):
    study = _study(tmp_path)
    # 90 % sparse at validation 1 (a fast ramp to a high target) and 10 points worse: no
    # finished trial was that sparse at validation 1, so the dip is not held against it.
    early = [{"sparsity": 0.3, "val_acc": 0.81}]
    assert not _report(study, 0.72, 0.90, 1, early)


def test_a_trial_worse_than_trials_at_least_as_sparse_is_pruned(tmp_path):
    study = _study(tmp_path)
    early = [{"sparsity": 0.0, "val_acc": 0.81}]
    assert _report(study, 0.70, 0.50, 1, early)  # same sparsity as all three, much worse
    assert not _report(study, 0.84, 0.50, 1, early)  # same sparsity, better than the median


def test_no_pruning_before_startup_trials_finish(tmp_path):
    study = optuna.create_study(
        storage=f"sqlite:///{tmp_path / 'optuna.db'}", direction="maximize",
        pruner=SparsityMatchedPruner(n_startup_trials=4),
    )  # fmt: skip
    _completed(study, [0.9, 0.9], [0.0, 0.0])
    assert not _report(study, 0.1, 0.0, 1, [{"sparsity": 0.0, "val_acc": 0.1}])
    assert all(t.state != TrialState.PRUNED for t in study.trials)


def test_unknown_pruner_kind_names_the_option():
    with pytest.raises(ValueError, match="search.pruner.kind must be one of"):
        build_pruner("sometimes", 4, 1)
