"""A resumed study run with other model, data or trainer settings says so: its earlier trials
and dense reference came from the first settings."""

from __future__ import annotations

import json

import optuna
from lightning_prune.search.contract import StudyAttr
from lightning_prune.search.study import config_drift
from omegaconf import OmegaConf

from lightning_prune.config import load_config


def _study_started_with(overrides: list[str]) -> optuna.Study:
    study = optuna.create_study(study_name="drift")
    first = OmegaConf.to_container(load_config(overrides), resolve=True)
    study.set_user_attr(StudyAttr.CONFIG, json.loads(json.dumps(first, default=str)))
    return study


def test_changed_data_and_epochs_are_named_with_both_values():
    study = _study_started_with(["data.subset=5000", "trainer.max_epochs=20"])
    drift = config_drift(study, load_config(["data.subset=1000", "trainer.max_epochs=1"]))
    assert drift is not None
    assert "data.subset=5000, trainer.max_epochs=20" in drift
    assert "data.subset=1000, trainer.max_epochs=1" in drift
    assert "search.study_name" in drift


def test_same_settings_or_display_options_only_give_no_warning():
    study = _study_started_with(["data.subset=5000"])
    assert config_drift(study, load_config(["data.subset=5000"])) is None
    shown = ["data.subset=5000", "trainer.enable_progress_bar=false", "search.n_trials=9"]
    assert config_drift(study, load_config(shown)) is None
    assert config_drift(optuna.create_study(), load_config([])) is None  # nothing recorded
