"""The search chooses static masks, per-input gates or both per trial; `max_flops` bounds the
average FLOPs a gated trial executes, and the ensemble takes gated members."""

from __future__ import annotations

import optuna
import pytest
from lightning_prune.ensembles.run import run_ensemble
from lightning_prune.search import TrialAttr, run_search
from lightning_prune.search.demand import sparsity_floor
from lightning_prune.search.space import apply_overrides, parse_space, suggest
from optuna.trial import TrialState

from lightning_prune.checkpoint import load_model
from lightning_prune.config import ConfigError, load_config
from lightning_prune.dynamic.gates import gated_layers
from tests.search_helpers import tiny


def test_modes_set_the_trial_config():
    cfg = load_config(["search=dynamic"])
    static = apply_overrides(cfg, {"dynamic": "static", "pruning.target_sparsity": 0.5})
    assert not static.dynamic and static.pruning.target_sparsity == 0.5
    gated = apply_overrides(cfg, {"dynamic": "dynamic", "dynamic.budget": 0.4,
                                  "pruning.target_sparsity": 0.5})  # fmt: skip
    assert gated.dynamic.budget == 0.4 and "_target_" not in gated.pruning
    both = apply_overrides(cfg, {"dynamic": "both", "dynamic.budget": 0.4,
                                 "pruning.target_sparsity": 0.5})  # fmt: skip
    assert both.dynamic._target_.endswith("DynamicGating") and both.pruning.target_sparsity == 0.5


def test_gates_alone_sample_no_pruning_parameters():
    """A `dynamic` trial has no static masks: it asks only for the mode, the budget and lr."""
    params = parse_space(load_config(["search=dynamic"]))
    gated = suggest(optuna.trial.FixedTrial({"mode": "dynamic", "budget": 0.3, "lr": 1e-3}),
                    params)  # fmt: skip
    assert gated == {"mode": "dynamic", "budget": 0.3, "lr": 1e-3}
    chosen = {p.name: p for p in params}
    assert chosen["criterion"].when == (("mode", ("static", "both")),)
    assert chosen["regrowth"].when == (("granularity", ("unstructured", "structured")),
                                       ("mode", ("static", "both")))  # fmt: skip
    with pytest.raises(ValueError, match="criterion"):  # static trials still ask for them
        suggest(optuna.trial.FixedTrial({"mode": "static", "lr": 1e-3}), params)


def test_max_flops_sets_no_sparsity_floor_where_trials_may_gate():
    static = load_config(["search.demand.max_flops=50000"])
    assert sparsity_floor(static) is not None
    assert sparsity_floor(load_config(["search=dynamic", "search.demand.max_flops=50000"])) is None


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("+search.space.m={target: dynamic, choices: [static, sometimes]}", "target 'dynamic'"),
        ("+search.space.b={target: dynamic.budgett, low: 0.2, high: 0.5}", "DynamicGating takes"),
    ],
)
def test_bad_dynamic_entries_fail_before_any_trial(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        run_search(load_config(tiny(tmp_path, override)))


def test_gated_trials_record_executed_flops_and_ensemble(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    only = [
        "search=dynamic", "search.n_trials=3", "search.pruner.kind=none",
        "search.space.mode.choices=[dynamic, both]", "search.space.budget.low=0.3",
        "search.space.budget.high=0.3", "search.space.granularity.choices=[unstructured]",
        "search.demand.max_flops=1e9", "dynamic=gated", "dynamic.measure_samples=16",
    ]  # fmt: skip
    study = run_search(load_config(tiny(tmp_path, *only)))
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 3
    for trial in complete:
        fraction = trial.user_attrs[TrialAttr.MACS_FRACTION]
        assert 0 < fraction < 0.6  # budget 0.3 on every gated layer, gates counted
        assert trial.user_attrs[TrialAttr.FLOPS] > 0
        if trial.params["mode"] == "dynamic":
            assert trial.user_attrs[TrialAttr.SPARSITY] < 0.05  # no static masks
        model, _ = load_model(tmp_path / "runs" / "studies" / "lightning-prune"
                           / trial.user_attrs[TrialAttr.CHECKPOINT])  # fmt: skip
        assert gated_layers(model)
    result = run_ensemble(load_config(tiny(tmp_path, "ensemble.k=2")))
    assert len(result.members) == 2 and 0 <= result.report.ensemble["test_acc"] <= 1
