"""CannotWinPruner: a trial is stopped only when even the largest late gain seen cannot lift it
past the best feasible trial."""

from __future__ import annotations

import math

import optuna
import pytest
from lightning_prune.search.bound_pruner import CannotWinPruner, metric_noise
from lightning_prune.search.pruners import build_pruner, stop_reason
from optuna.trial import TrialState


def _complete(study: optuna.Study, curve: list[float], feasible: bool = True) -> None:
    trial = study.ask()
    for step, value in enumerate(curve):
        trial.report(value, step)
    trial.set_constraint("min_sparsity", 0.0 if feasible else 0.1)
    study.tell(trial, curve[-1])


def _judge(study: optuna.Study, curve: list[float]) -> bool:
    trial = study.ask()
    for step, value in enumerate(curve):
        trial.report(value, step)
    stop = trial.should_prune()
    study.tell(trial, state=TrialState.PRUNED if stop else TrialState.FAIL)
    return stop


def _study(n_startup_trials: int = 2, margin: float | None = 0.0) -> optuna.Study:
    return optuna.create_study(
        direction="maximize", pruner=CannotWinPruner(n_startup_trials, margin=margin)
    )


def test_nothing_is_stopped_before_the_startup_trials():
    study = _study(n_startup_trials=2)
    _complete(study, [0.5, 0.9])
    assert not _judge(study, [0.1])


def test_a_trial_that_cannot_catch_up_is_stopped():
    study = _study()
    _complete(study, [0.80, 0.85])  # late gain 0.05
    _complete(study, [0.86, 0.88])  # late gain 0.02; best 0.88
    assert _judge(study, [0.80])  # 0.80 + 0.05 < 0.88
    assert not _judge(study, [0.84])  # 0.84 + 0.05 >= 0.88: it still can win


def test_a_late_riser_is_kept_because_a_completed_trial_rose_as_much():
    study = _study()
    _complete(study, [0.50, 0.90])  # dipped mid-ramp and recovered: late gain 0.40
    _complete(study, [0.85, 0.86])
    assert not _judge(study, [0.55])  # a median rule would stop it (0.55 < 0.675)
    median = optuna.create_study(direction="maximize", pruner=build_pruner("median", 2, 0))
    _complete(median, [0.50, 0.90])
    _complete(median, [0.85, 0.86])
    assert _judge(median, [0.55])


def test_the_value_to_beat_is_the_best_feasible_one():
    study = _study()
    _complete(study, [0.95, 0.99], feasible=False)  # would set the bar if counted
    _complete(study, [0.80, 0.82])
    _complete(study, [0.80, 0.83])
    trial = study.ask()
    trial.report(0.80, 0)
    judged = CannotWinPruner(2, margin=0.0).bound(study, study.trials[-1])
    assert judged["to_beat"] == pytest.approx(0.83)
    assert judged["optimistic"] == pytest.approx(0.80 + 0.04)


def test_the_margin_keeps_trials_near_the_bound():
    strict, lenient = _study(), _study(margin=0.05)
    for study in (strict, lenient):
        _complete(study, [0.80, 0.85])
        _complete(study, [0.86, 0.88])
    assert _judge(strict, [0.80]) and not _judge(lenient, [0.80])


def test_the_automatic_margin_is_the_metrics_own_noise():
    study = _study(margin=None)  # noise_factor 2
    _complete(study, [0.70, 0.80, 0.82, 0.81])  # settled half moves by 0.01
    _complete(study, [0.70, 0.80, 0.85, 0.86])  # by 0.01; late gain from step 0: 0.16
    assert metric_noise(study.get_trials(states=(TrialState.COMPLETE,))) == pytest.approx(0.01)
    assert not _judge(study, [0.69])  # 0.69 + 0.16 + 0.02 >= 0.86
    assert _judge(study, [0.67])  # 0.67 + 0.16 + 0.02 < 0.86
    stopped = study.trials[-1]
    reason = CannotWinPruner(2).explain(study, stopped)
    assert "cannot win" in reason and "noise margin 0.0200" in reason and "0.8600" in reason


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_non_finite_value_stops_at_once(value):
    assert _judge(_study(n_startup_trials=5), [value])


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"n_startup_trials": -1}, "n_startup_trials"), ({"n_warmup_steps": -1}, "n_warmup_steps"),
     ({"margin": -0.1}, "margin"), ({"noise_factor": -1}, "noise_factor")],
)  # fmt: skip
def test_bad_arguments_name_themselves(kwargs, name):
    with pytest.raises(ValueError, match=name):
        CannotWinPruner(**kwargs)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [("bound", "cannot win: best so far 0.5000"), ("matched", "below the matched median at "
     "validation 0: best so far 0.5000 vs median 0.8000 of 3"),
     ("median", "below MedianPruner's threshold at validation 0")],
)  # fmt: skip
def test_a_stopped_trial_says_why_with_the_numbers(kind, expected):
    study = optuna.create_study(direction="maximize", pruner=build_pruner(kind, 3, 0))
    for value in (0.8, 0.8, 0.8):
        _complete(study, [value, value])
    trial = study.ask()
    trial.report(0.5, 0)
    assert trial.should_prune()
    assert expected in stop_reason(study, trial.number)
