"""Every preset in conf/pruning instantiates through Hydra and prunes a tiny run to its target."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from lightning_prune.config import load_preset
from lightning_prune.pruning import AdaptivePruning
from tests.pruning_helpers import classifier, tiny_data, trainer

PRESETS = Path(__file__).resolve().parents[1] / "conf" / "pruning"
NAMES = [
    "magnitude_gradual",
    "taylor_adaptive",
    "hybrid_adaptive",
    "structured",
    "nm_2_4",
    "auto",
    "dns",
]


def test_none_preset_is_empty():
    assert OmegaConf.to_container(OmegaConf.load(PRESETS / "none.yaml")) == {}


@pytest.mark.parametrize("name", NAMES)
def test_preset_instantiates_and_prunes(name):
    cfg = load_preset("pruning", name)
    cfg.frequency, cfg.verbose = 2, False
    pruning = instantiate(cfg)
    assert isinstance(pruning, AdaptivePruning)
    trainer([pruning], max_epochs=2).fit(classifier(), tiny_data())
    summary = pruning.summary()
    assert summary["sparsity"] > 0.3, name
    if cfg.monitor is None:  # no controller: the schedule reaches its target exactly
        assert summary["sparsity"] == pytest.approx(summary["target"], abs=0.01), name
    else:
        assert summary["events"][0]["kind"] == "reference"
