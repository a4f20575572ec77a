"""The search space: parsed from conf/search, overridable, validated before any trial."""

from __future__ import annotations

import optuna
import pytest
from lightning_prune.search import run_search, space

from lightning_prune.config import ConfigError, load_config


def test_default_space_parses_with_the_nm_pattern_conditional():
    cfg = load_config([])
    params = {p.name: p for p in space.parse_space(cfg)}
    assert {
        "criterion",
        "granularity",
        "target_sparsity",
        "schedule",
        "start",
        "end",
        "frequency",
        "tolerance",
        "regrowth",
        "lr",
        "nm",
    } <= set(params)
    assert params["frequency"].is_int and params["lr"].log
    fixed = {
        "criterion": "magnitude",
        "target_sparsity": 0.9,
        "schedule": "cubic",
        "start": 0.1,
        "end": 0.5,
        "frequency": 20,
        "tolerance": 0.01,
        "regrowth": "none",
        "lr": 1e-3,
    }
    dense = space.suggest(
        optuna.trial.FixedTrial({**fixed, "granularity": "unstructured"}), list(params.values())
    )
    assert "nm" not in dense
    nm = space.suggest(
        optuna.trial.FixedTrial({**fixed, "granularity": "n:m", "nm": "2:4"}),
        space.parse_space(cfg),
    )
    assert nm["nm"] == "2:4"
    trial_cfg = space.apply_overrides(cfg, space.trial_overrides(space.parse_space(cfg), nm))
    assert trial_cfg.pruning._target_ == "lightning_prune.pruning.AdaptivePruning"
    assert trial_cfg.pruning.nm == "2:4" and trial_cfg.model.lr == 1e-3


def test_ranges_are_overridden_from_the_command_line():
    cfg = load_config(
        [
            "search.space.lr.high=0.05",
            "search.space.criterion.choices=[random]",
            "~search.space.regrowth",
        ]
    )
    params = {p.name: p for p in space.parse_space(cfg)}
    assert params["lr"].high == 0.05
    assert params["criterion"].choices == ("random",)
    assert "regrowth" not in params


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("search.space.lr.low=0.5", "search.space.lr: low (0.5) > high (0.01)"),
        ("search.space.lr.low=0", "search.space.lr: log range needs low > 0"),
        (
            "+search.space.bogus={target: pruning.not_an_arg, low: 1, high: 2}",
            "search.space.bogus: unknown parameter 'pruning.not_an_arg'",
        ),
        (
            "+search.space.wd={target: model.weight_dacay, low: 0.0, high: 0.1}",
            "search.space.wd: unknown parameter 'model.weight_dacay'",
        ),
        ("+search.space.lr.typo=1", "search.space.lr: unknown field(s) ['typo']"),
        ("+search.space.nm.when.other=[a]", "search.space.nm: `when` refers to unknown parameter"),
        ("search.space.criterion.choices=[]", "search.space.criterion: choices must be"),
    ],
)
def test_bad_entries_fail_before_any_trial_naming_the_entry(
    tmp_path, monkeypatch, override, message
):
    monkeypatch.chdir(tmp_path)
    cfg = load_config([override, f"search.storage=sqlite:///{tmp_path}/optuna.db"])
    with pytest.raises(ConfigError, match=None) as err:
        run_search(cfg)
    assert message in str(err.value)
    assert not (tmp_path / "optuna.db").exists()  # nothing was created, no trial ran
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("search.workers=2", "search.workers=2 needs a storage safe for parallel writers"),
        ("search.storage=ftp://x", "is not a storage URL"),
        ("search.demand.min_sparsity=1.5", "search.demand.min_sparsity must be < 1"),
        ("+search.demand.max_speed=3", "search.demand.max_speed is unknown"),
        ("search.pruner.kind=sometimes", "search.pruner.kind must be"),
        ("search.objective=fast", "search.objective must be"),
    ],
)
def test_bad_search_settings_fail_before_any_trial(tmp_path, monkeypatch, override, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        run_search(load_config([override]))
    assert message in str(err.value)
    assert not (tmp_path / "runs").exists()
