"""The search space shaped by the demand: only recipes that can meet it are sampled."""

from __future__ import annotations

import pytest
from lightning_prune.search import run_search
from lightning_prune.search.demand import nm_sparsity, shape_space, sparsity_floor
from optuna.trial import TrialState

from lightning_prune.config import ConfigError, load_config
from tests.search_helpers import tiny


def _space(*overrides: str):
    shaped, notes = shape_space(load_config(list(overrides)))
    return shaped.search.space, notes


def test_no_demand_leaves_the_space_alone():
    cfg = load_config([])
    shaped, notes = shape_space(cfg)
    assert notes == [] and shaped.search.space == cfg.search.space


def test_nm_patterns_that_do_not_fit_the_model_are_left_out_without_a_demand():
    """LeNet-5's first convolution has one input channel: no M=4 pattern fits it."""
    space, notes = _space("model=lenet5")
    assert "n:m" not in space.granularity.choices
    assert len(notes) == 1 and notes[0].startswith("n:m left out: nm='2:4': M=4 does not divide")
    assert "net.0.weight" in notes[0]
    fits, more = _space("model=lenet5", "pruning=base", "pruning.exclude=[net.0]")
    assert "n:m" in fits.granularity.choices and more == []
    with pytest.raises(ConfigError, match="granularity n:m cannot prune this model"):
        shape_space(load_config(["model=lenet5", "search.space.granularity.choices=[n:m]"]))


def test_min_sparsity_raises_the_target_range_and_drops_nm_below_it():
    space, notes = _space("search.demand.min_sparsity=0.9")
    assert space.target_sparsity.low == 0.9 and space.target_sparsity.high == 0.98
    assert "n:m" not in space.granularity.choices
    assert any("n:m left out" in n for n in notes)


def test_only_nm_patterns_that_reach_the_demand_stay():
    space, _ = _space("search.demand.min_sparsity=0.6")
    assert "n:m" in space.granularity.choices
    assert list(space.nm.choices) == ["1:4"]
    assert nm_sparsity("1:4") == 0.75


def test_max_nonzero_params_becomes_a_sparsity_floor():
    cfg = load_config(["search.demand.max_nonzero_params=20000"])
    floor = sparsity_floor(cfg)
    # LeNet-300-100: 266,200 prunable weights, 410 biases
    assert floor.sparsity == pytest.approx((266_610 - 20_000) / 266_200)
    space, _ = _space("search.demand.max_nonzero_params=20000")
    assert space.target_sparsity.low == pytest.approx(floor.sparsity, abs=1e-6)


def test_max_flops_becomes_a_sparsity_floor_at_uniform_density():
    floor = sparsity_floor(load_config(["search.demand.max_flops=50000"]))
    assert 0.9 < floor.sparsity < 0.92 and "max_flops" in floor.because


def test_the_strictest_demand_sets_the_floor():
    both = ["search.demand.min_sparsity=0.95", "search.demand.max_nonzero_params=20000"]
    assert sparsity_floor(load_config(both)).because == "search.demand.min_sparsity"


def test_latency_below_the_dense_model_keeps_only_structured():
    space, notes = _space("search.demand.max_latency_ms=0.000001")
    assert list(space.granularity.choices) == ["structured"]
    assert "only structured pruning" in notes[0]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["search.demand.max_nonzero_params=100"], "410 parameters of the model are not"),
        (["search.demand.min_sparsity=0.995"], "above pruning.max_sparsity=0.99"),
        (
            ["search.demand.max_latency_ms=0.000001", "search.space.granularity.choices=[n:m]"],
            "no granularity in ['n:m'] can meet search.demand",
        ),
        (
            ["search.demand.min_sparsity=0.9", "~search.space.target_sparsity",
             "pruning=magnitude_gradual", "pruning.target_sparsity=0.8"],
            "pruning.target_sparsity=0.8 is below 0.9000",
        ),
    ],
)  # fmt: skip
def test_a_demand_nothing_can_meet_fails_before_training(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        shape_space(load_config(overrides))


def test_a_search_samples_only_what_can_meet_the_demand(tmp_path, capsys):
    cfg = load_config(
        tiny(tmp_path, "search.demand.min_sparsity=0.9", "search.n_trials=4",
             "search.dense_reference=false", "search.pruner.kind=none")
    )  # fmt: skip
    study = run_search(cfg)
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 4
    assert all(t.params["granularity"] != "n:m" for t in trials)
    assert all(t.params["target_sparsity"] >= 0.9 for t in trials)
    assert all(t.user_attrs["feasible"] for t in trials)  # nothing trained in vain
    assert "search space: n:m left out" in capsys.readouterr().err


def test_latency_is_measured_on_the_compacted_model(tmp_path):
    cfg = load_config(
        tiny(tmp_path, "search.demand.max_latency_ms=0.000001", "search.n_trials=2",
             "search.dense_reference=false", "search.pruner.kind=none")
    )  # fmt: skip
    study = run_search(cfg)
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert trials and all(t.params["granularity"] == "structured" for t in trials)
    assert all(t.user_attrs["latency_ms"] > 0 for t in trials)
    assert not any(t.user_attrs["feasible"] for t in trials)  # nothing runs in a picosecond
