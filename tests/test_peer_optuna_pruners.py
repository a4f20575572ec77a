"""Optuna's median/percentile pruner tests, ported to SparsityMatchedPruner.

Sources (github.com/optuna/optuna, commit 1d8ce7bb6f3c): tests/pruners_tests/test_median.py,
tests/pruners_tests/test_percentile.py, and the generic scenarios of
tests/pruners_tests/test_nop.py, test_successive_halving.py and test_wilcoxon.py.

Every scenario runs on a real in-memory study. Trials record each validation as
search/reporter.py does: the `curve` user attribute (one point per validation, holding its
sparsity), then `trial.report(value, step)`. Where Optuna's MedianPruner has the same
settings, the scenario also runs on it: our pruner must give the same answers, except where
SparsityMatchedPruner's docstring says it differs on purpose (non-finite values, steps
without a curve entry, sparsity matching), and there the test asserts both answers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import optuna
import pytest
from lightning_prune.search.pruners import SparsityMatchedPruner
from optuna.trial import TrialState

NAN, INF = float("nan"), float("inf")
SPARSITY = 0.5  # every trial of a ported scenario is as sparse: all completed trials are peers

Sparsity = float | Sequence[float] | None
Scenario = Callable[[optuna.Study], list[bool]]


def _validate(trial: optuna.Trial, step: int, value: float, sparsity: Sparsity = SPARSITY):
    """Validation `step` as the reporter records it: its curve point, then the report.

    `sparsity` is one value for every validation, a list indexed by validation, or None (no
    curve at all). Validations before `step` that have no point yet get one (unreported).
    """
    if sparsity is not None:
        at = sparsity if isinstance(sparsity, Sequence) else [sparsity] * (step + 1)
        curve = list(trial.user_attrs.get("curve", []))
        curve += [{"val_acc": None, "sparsity": at[k]} for k in range(len(curve), step + 1)]
        curve[step] = {"val_acc": value, "sparsity": at[step]}
        trial.set_user_attr("curve", curve)
    trial.report(value, step)


def _complete(
    study: optuna.Study, values: dict[int, float], sparsity: Sparsity = SPARSITY, final=None
) -> None:
    """A completed trial that reported `values` ({step: value})."""
    trial = study.ask()
    for step, value in values.items():
        _validate(trial, step, value, sparsity)
    study.tell(trial, -1 if final is None else final)


def _ours(n_startup_trials=0, n_warmup_steps=0, n_min_trials=1) -> SparsityMatchedPruner:
    return SparsityMatchedPruner(n_startup_trials, n_warmup_steps, n_min_trials)


def _answers(scenario: Scenario, direction="minimize", **settings) -> tuple[list, list]:
    """`scenario`'s should_prune answers under our pruner and under Optuna's MedianPruner."""
    median = optuna.pruners.MedianPruner(
        settings.get("n_startup_trials", 0),
        settings.get("n_warmup_steps", 0),
        n_min_trials=settings.get("n_min_trials", 1),
    )
    return (
        scenario(optuna.create_study(direction=direction, pruner=_ours(**settings))),
        scenario(optuna.create_study(direction=direction, pruner=median)),
    )


def test_first_trial_is_not_pruned():
    """Follows test_median.py::test_median_pruner_with_one_trial (and the percentile one)."""

    def scenario(study):
        trial = study.ask()
        _validate(trial, 1, 1)
        return [trial.should_prune()]

    ours, median = _answers(scenario)
    assert ours == median == [False]


def test_first_trial_is_not_pruned_at_any_step():
    """Follows test_successive_halving_pruner_first_trial_is_not_pruned."""

    def scenario(study):
        trial = study.ask()
        answers = [trial.should_prune()]  # nothing reported yet (test_wilcoxon_pruner_first_trial)
        for step in range(10):
            _validate(trial, step, 1)
            answers.append(trial.should_prune())
        return answers

    ours, median = _answers(scenario)
    assert ours == median == [False] * 11


def test_nop_pruner_scenario_with_the_default_settings():
    """Follows test_nop.py::test_nop_pruner: a lone trial is never pruned, defaults included."""
    study = optuna.create_study(pruner=SparsityMatchedPruner())
    trial = study.ask()
    _validate(trial, 1, 1)
    assert not trial.should_prune()


@pytest.mark.parametrize("direction, value", [("minimize", 2), ("maximize", 0.5)])
def test_intermediate_values(direction, value):
    """Follows test_median.py::test_median_pruner_intermediate_values."""

    def scenario(study):
        _complete(study, {1: 1}, final=1)
        trial = study.ask()
        answers = [trial.should_prune()]  # no intermediate values: not pruned
        _validate(trial, 1, value)
        return [*answers, trial.should_prune()]

    ours, median = _answers(scenario, direction)
    assert ours == median == [False, True]


@pytest.mark.parametrize(
    "direction, pruned, kept", [("minimize", 3.1, 3.0), ("maximize", 2.9, 3.0)]
)
def test_median_of_five_intermediate_values(direction, pruned, kept):
    """Follows test_percentile.py::test_25_percentile_pruner_intermediate_values (at the 50th)."""

    def scenario(study):
        for value in [1, 2, 3, 4, 5]:
            _complete(study, {1: value}, final=value)
        answers = []
        for value in (pruned, kept):  # worse than the median of 3 / equal to it
            trial = study.ask()
            answers.append(trial.should_prune())
            _validate(trial, 1, value)
            answers.append(trial.should_prune())
        return answers

    ours, median = _answers(scenario, direction)
    assert ours == median == [False, True, False, False]


@pytest.mark.parametrize("direction, worse", [("minimize", 2), ("maximize", 0.5)])
def test_intermediate_values_among_sparse_trials(direction, worse):
    """Follows test_median.py::test_median_pruner_intermediate_values, with sparse trials."""
    study = optuna.create_study(direction=direction, pruner=_ours())
    _complete(study, {1: 1}, sparsity=0.9, final=1)  # the only completed trial: 90 % sparse

    def judged(sparsity: float) -> bool:
        trial = study.ask()
        _validate(trial, 1, worse, sparsity)
        return trial.should_prune()

    assert judged(0.5)  # a denser trial is judged against the sparser one: pruned
    assert judged(0.904)  # sparser by less than `slack` (0.005): still a peer
    assert not judged(0.91)  # sparser than every completed trial: not judged
    assert not judged(0.99)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_nan_intermediate_values():
    """Follows test_median.py::test_median_pruner_intermediate_values_nan (and percentile's)."""

    def scenario(study):
        answers = []
        for value in (NAN, NAN, 1):
            trial = study.ask()
            _validate(trial, 1, value)
            answers.append(trial.should_prune())
            study.tell(trial, -1)  # -1: a study cannot be told NaN
        return answers

    ours, median = _answers(scenario)
    # MedianPruner keeps the first trial's NaN (no previous trials); we prune it at once: a NaN
    # metric means diverged weights, no peers needed. A second NaN is pruned by both; a finite
    # value whose peers have only NaN at its step is kept by both.
    assert median == [False, True, False]
    assert ours == [True, True, False]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_best_intermediate_value_over_steps(bad):
    """Follows test_percentile.py::test_get_best_intermediate_result_over_steps."""

    def scenario(study):
        _complete(study, {0: 0.5, 1: 0.5, 2: 0.5}, final=0.5)
        trial = study.ask()
        _validate(trial, 0, 0.2)
        answers = [trial.should_prune()]
        _validate(trial, 1, 0.8)  # worse than the median, but the best so far (0.2) is not
        answers.append(trial.should_prune())
        _validate(trial, 2, bad)  # best so far is still 0.2
        answers.append(trial.should_prune())
        late = study.ask()
        _validate(late, 0, bad)
        answers.append(late.should_prune())
        _validate(late, 1, 0.4)  # the earlier non-finite value is no "best": 0.4 is
        answers.append(late.should_prune())
        return answers

    ours, median = _answers(scenario)
    # A non-finite latest value prunes ours at once; MedianPruner keeps a trial whose best
    # value so far (NaN ignored) is good. Otherwise both judge the best finite value so far.
    assert ours == [False, False, True, True, False]
    if bad == -INF:  # minimizing, -inf is the best value there is: MedianPruner keeps it
        assert median == [False, False, False, False, False]
    else:  # NaN alone is pruned; inf alone is worse than the median
        assert median == [False, False, False, True, False]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_median_over_completed_trials_with_nan():
    """Follows test_percentile.py::test_get_percentile_intermediate_result_over_trials."""
    step_values = [
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],  # median 0.5
        [0.1, 0.2, 0.3, 0.4, 0.5, NAN, NAN, NAN, NAN],  # median of the finite values: 0.3
        [NAN] * 9,  # no median
    ]

    def scenario(study):
        for i in range(9):
            _complete(study, {k: values[i] for k, values in enumerate(step_values)}, final=0)
        answers = []
        for step, value in [(0, 0.5), (0, 0.51), (1, 0.3), (1, 0.31), (2, 100)]:
            trial = study.ask()
            _validate(trial, step, value)  # only this step reported: judged there alone
            answers.append(trial.should_prune())
        return answers

    ours, median = _answers(scenario)
    assert ours == median == [False, True, False, True, False]

    def at_step_1(study):  # 9 trials have a value at step 1, 5 of them finite
        return scenario(study)[2:4]

    ours, median = _answers(at_step_1, n_min_trials=9)
    assert median == [False, True]  # MedianPruner counts the NaN values towards n_min_trials
    assert ours == [False, False]  # we do not: 5 finite values are too few to judge
    ours, median = _answers(at_step_1, n_min_trials=5)
    assert ours == median == [False, True]


def test_n_startup_trials():
    """Follows test_median.py::test_median_pruner_n_startup_trials."""

    def scenario(study):
        _complete(study, {1: 1}, final=1)
        trial = study.ask()
        _validate(trial, 1, 2)
        answers = [trial.should_prune()]  # during the startup trials
        study.tell(trial, 2)
        trial = study.ask()
        _validate(trial, 1, 3)
        return [*answers, trial.should_prune()]  # after them

    ours, median = _answers(scenario, n_startup_trials=2)
    assert ours == median == [False, True]


def test_only_completed_trials_count_as_startup_trials_and_peers():
    """Follows test_median.py::test_median_pruner_n_startup_trials, with pruned/running trials."""

    def scenario(study):
        _complete(study, {1: 1}, final=1)
        pruned = study.ask()
        _validate(pruned, 1, 0.5)
        study.tell(pruned, state=TrialState.PRUNED)
        running = study.ask()
        _validate(running, 1, 0.5)
        trial = study.ask()
        _validate(trial, 1, 3)
        answers = [trial.should_prune()]  # one completed trial of two
        study.tell(running, 0.5)
        return [*answers, trial.should_prune()]  # two completed trials: median 0.75

    ours, median = _answers(scenario, n_startup_trials=2)
    assert ours == median == [False, True]


def test_no_finished_trials_yet():
    """Follows test_median.py::test_median_pruner_intermediate_values_nan (no previous trials)."""

    def scenario(study):
        for value in (0.1, 0.2):
            running = study.ask()  # better trials, still running
            _validate(running, 1, value)
        failed = study.ask()
        _validate(failed, 1, 0.1)
        study.tell(failed, state=TrialState.FAIL)
        trial = study.ask()
        _validate(trial, 1, 5)
        answers = [trial.should_prune()]
        _validate(trial, 2, NAN)
        return [*answers, trial.should_prune()]

    ours, median = _answers(scenario, n_min_trials=1)
    assert median == [False, False]  # MedianPruner judges nothing before a trial completes
    assert ours == [False, True]  # a finite value neither; a NaN is pruned at once


def test_completed_trial_without_intermediate_values_is_no_peer():
    """Follows test_wilcoxon.py::test_wilcoxon_pruner_when_best_trial_has_no_intermediate_value."""

    def scenario(study):
        study.tell(study.ask(), 10)
        _complete(study, {0: 0.1}, final=0.1)  # a value, but not at the steps judged below
        trial = study.ask()
        answers = [trial.should_prune()]
        for step in (1, 2):
            _validate(trial, step, step)
            answers.append(trial.should_prune())
        return answers

    ours, median = _answers(scenario)
    assert ours == median == [False, False, False]


def test_n_warmup_steps():
    """Follows test_median.py::test_median_pruner_n_warmup_steps."""

    def scenario(study):
        _complete(study, {0: 1, 1: 1}, final=1)
        trial = study.ask()
        _validate(trial, 0, 2)
        answers = [trial.should_prune()]  # during the warm-up steps
        _validate(trial, 1, 2)
        answers.append(trial.should_prune())  # after them
        diverged = study.ask()
        _validate(diverged, 0, NAN)
        return [*answers, diverged.should_prune()]  # warm-up holds for NaN too

    ours, median = _answers(scenario, n_warmup_steps=1)
    assert ours == median == [False, True, False]


@pytest.mark.parametrize(
    "n_warmup_steps, report_steps, expected_prune_steps",
    [
        (0, 1, list(range(6))),  # the original's rows with interval_steps=1
        (1, 1, list(range(1, 6))),
        (0, 3, list(range(29))),  # values only every report_steps validations
        (2, 3, list(range(3, 29))),
        (0, 10, list(range(29))),
        (2, 10, list(range(10, 29))),
    ],
)
def test_interval_steps(n_warmup_steps, report_steps, expected_prune_steps):
    """Follows test_median.py::test_median_pruner_interval_steps (interval_steps=1)."""
    last_step = max(expected_prune_steps) + 1

    def scenario(study):
        _complete(study, dict.fromkeys(range(last_step), 0), final=0)
        trial = study.ask()
        pruned = []
        for i in range(last_step):
            if i % report_steps == 0:
                _validate(trial, i, 2)
            if trial.should_prune():  # asked again and again without a new value
                pruned.append(i)
        return pruned

    ours, median = _answers(scenario, n_warmup_steps=n_warmup_steps)
    assert ours == median == expected_prune_steps


def test_values_only_at_some_steps_keep_their_own_sparsity():
    """Follows test_median.py::test_median_pruner_interval_steps (values not at every step)."""
    study = optuna.create_study(direction="maximize", pruner=_ours())
    ramp = [0.0, 0.2, 0.4, 0.6, 0.8]  # one point per validation; values only at 0, 2 and 4
    _complete(study, {0: 0.8, 2: 0.8, 4: 0.8}, sparsity=ramp, final=0.8)

    trial = study.ask()
    for step in (0, 2, 4):
        _validate(trial, step, 0.5, sparsity=ramp)
    assert trial.should_prune()  # as sparse as the peer at step 4 (curve[4]): judged, worse

    sparser = study.ask()
    for step in (0, 2, 4):
        _validate(sparser, step, 0.5, sparsity=[0.0, 0.2, 0.4, 0.6, 0.9])
    assert not sparser.should_prune()  # sparser than the peer at step 4: not judged


def test_steps_without_a_curve_entry_read_as_dense():
    """Follows test_median.py::test_median_pruner_interval_steps (steps with gaps in the curve)."""
    study = optuna.create_study(direction="maximize", pruner=_ours())
    _complete(study, {0: 0.8, 2: 0.8, 4: 0.8}, sparsity=0.9, final=0.8)  # 5-point curve

    def sparse_trial(curve_points: int) -> optuna.Trial:
        trial = study.ask()
        trial.set_user_attr("curve", [{"val_acc": 0.5, "sparsity": 0.99}] * curve_points)
        for step in (0, 2, 4):
            trial.report(0.5, step)
        return trial

    assert not sparse_trial(5).should_prune()  # 99 % sparse at step 4: no peer, not judged
    # A curve with one point per report (3) has no entry for step 4: the trial reads as dense
    # there and is judged against every completed trial (the plain median rule).
    assert sparse_trial(3).should_prune()

    no_curve = optuna.create_study(direction="maximize", pruner=_ours())
    _complete(no_curve, {0: 0.8, 2: 0.8, 4: 0.8}, sparsity=None, final=0.8)
    trial = no_curve.ask()
    _validate(trial, 4, 0.5, sparsity=0.5)
    assert not trial.should_prune()  # a peer without sparsity counts only against dense trials
    trial = no_curve.ask()
    _validate(trial, 4, 0.5, sparsity=0.0)
    assert trial.should_prune()


def test_n_min_trials():
    """Follows test_median.py::test_median_pruner_n_min_trials."""

    def scenario(study):
        _complete(study, {1: 4, 2: 2}, final=2)
        _complete(study, {1: 3}, final=3)
        answers = []
        for _ in range(2):  # 1, then 2 completed trials with a value at step 2
            trial = study.ask()
            _validate(trial, 1, 4)
            _validate(trial, 2, 3)
            answers.append(trial.should_prune())
            study.tell(trial, 3)
        return answers

    ours, median = _answers(scenario, n_startup_trials=2, n_min_trials=2)
    assert ours == median == [False, True]


def test_n_min_trials_counts_only_peers_as_sparse():
    """Follows test_median.py::test_median_pruner_n_min_trials, with sparse trials."""
    study = optuna.create_study(pruner=_ours(n_min_trials=2))
    _complete(study, {1: 1}, sparsity=0.9, final=1)
    _complete(study, {1: 1}, sparsity=0.5, final=1)
    for sparsity, pruned in [(0.9, False), (0.5, True), (0.0, True)]:
        trial = study.ask()
        _validate(trial, 1, 2, sparsity)
        assert trial.should_prune() is pruned  # at 90 %: one peer of the two


def test_same_trial_asked_repeatedly():
    """Follows test_median.py::test_median_pruner_interval_steps (asked again, same values)."""

    def scenario(study):
        _complete(study, {k: 0.5 for k in range(4)}, final=0.5)
        trial = study.ask()
        answers = []
        for step, value in enumerate([0.9, 0.9, 0.4, 0.9]):  # minimize: best so far decides
            _validate(trial, step, value)
            answers += [trial.should_prune(), trial.should_prune(), trial.should_prune()]
        return answers

    ours, median = _answers(scenario)
    assert ours == median == [True] * 6 + [False] * 6


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_startup_trials": -1}, "n_startup_trials must be >= 0, got -1"),
        ({"n_warmup_steps": -1}, "n_warmup_steps must be >= 0, got -1"),
        ({"n_min_trials": 0}, "n_min_trials must be >= 1, got 0"),
        ({"n_min_trials": -1}, "n_min_trials must be >= 1, got -1"),
        ({"slack": -0.1}, "slack must be between 0 and 1 inclusive, got -0.1"),
        ({"slack": 1.1}, "slack must be between 0 and 1 inclusive, got 1.1"),
        ({"slack": NAN}, "slack must be between 0 and 1 inclusive, got nan"),
    ],
)
def test_invalid_constructor_arguments(kwargs, message):
    """Follows test_percentile.py::test_percentile_pruner_n_startup_trials and its siblings."""
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        SparsityMatchedPruner(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_startup_trials": 0},
        {"n_startup_trials": 5},
        {"n_warmup_steps": 0},
        {"n_warmup_steps": 5},
        {"n_min_trials": 1},
        {"n_min_trials": 5},
        {"slack": 0.0},
        {"slack": 1.0},
    ],
)
def test_valid_constructor_arguments(kwargs):
    """Follows test_percentile.py::test_percentile_pruner_n_warmup_steps and its siblings."""
    SparsityMatchedPruner(**kwargs)
