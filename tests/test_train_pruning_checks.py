"""The `train` command checks the pruning options against the model before anything is
recorded, as the callback would at the start of `fit`."""

from __future__ import annotations

import pytest

from lightning_prune.config import ConfigError, load_config
from lightning_prune.train import build_components

SMALL = ["data=synthetic", "trainer.max_epochs=1"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model=lenet5", "pruning=nm_2_4"], r"pruning: nm='2:4': M=4 does not divide .*net\.0"),
        (["pruning=dns", "pruning.include=[foo]"], r"no parameter matched include=\['foo'\]"),
        (["pruning=dns", "trainer.max_epochs=-1"], r"trainer\.max_epochs=-1 with no .*max_steps"),
    ],
)
def test_pruning_that_cannot_run_on_the_model_fails_before_training(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_components(load_config([*SMALL, *overrides]))


@pytest.mark.parametrize(
    "overrides",
    [
        ["model=lenet5", "pruning=nm_2_4", "pruning.exclude=[net.0]"],
        ["pruning=dns", "trainer.max_epochs=-1", "+trainer.max_steps=20"],
        ["pruning=dns", "trainer.max_epochs=-1", "pruning.total_steps=20"],
    ],
)
def test_the_advised_fixes_pass_the_check(overrides):
    _, _, pruning = build_components(load_config([*SMALL, *overrides]))
    assert pruning is not None
