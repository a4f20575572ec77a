import inspect

import pytest
from omegaconf import OmegaConf

from lightning_prune.config import ConfigError, config_groups, load_config, load_preset
from lightning_prune.pruning import AdaptivePruning


def test_default_config_composes():
    cfg = load_config()
    assert cfg.model.network == "lenet300" and cfg.data.seed == cfg.seed
    assert cfg.tracking.uri == "sqlite:///runs/mlflow.db"
    groups = config_groups()
    assert {"data", "model", "trainer", "pruning"} <= set(groups)
    assert {"lenet300", "lenet5", "vgg_small"} <= set(groups["model"])


def test_overrides_apply():
    cfg = load_config(["model=lenet5", "trainer.max_epochs=3", "data.subset=5000", "seed=7"])
    assert (cfg.model.network, cfg.trainer.max_epochs, cfg.data.subset) == ("lenet5", 3, 5000)
    assert cfg.data.seed == 7


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("trainer.max_epochz=3", "trainer.max_epochz"),
        ("trainer.max_epochs=ten", "trainer.max_epochs"),
        ("model=resnet", "model/resnet"),
        ("model.lr=fast", "model.lr"),
        ("trainer.enable_progress_bar=maybe", "trainer.enable_progress_bar"),
    ],
)
def test_bad_overrides_name_the_key(override, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config([override])


def test_pruning_base_preset_is_the_callback_defaults():
    signature = inspect.signature(AdaptivePruning).parameters.items()
    defaults = {n: list(p.default) if isinstance(p.default, tuple) else p.default
                for n, p in signature}  # fmt: skip
    base = OmegaConf.to_container(load_preset("pruning", "base"))
    assert base.pop("_target_") == "lightning_prune.pruning.AdaptivePruning"
    assert base == defaults


@pytest.mark.parametrize("name", config_groups()["pruning"])
def test_a_preset_read_alone_is_the_preset_in_a_run(name):
    alone = OmegaConf.to_container(load_preset("pruning", name))
    assert alone == OmegaConf.to_container(load_config([f"pruning={name}"]).pruning)
