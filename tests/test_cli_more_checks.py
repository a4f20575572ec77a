"""The limits of the newer option checks: what they refuse (tests/bad_input_cases.py runs the
refusals end to end) and the neighbouring values they must keep accepting."""

from __future__ import annotations

import pytest
from lightning_prune.search.storage import check_heartbeats
from omegaconf import OmegaConf

from lightning_prune.config import ConfigError, load_config
from lightning_prune.hydra_app import hydra_argv
from lightning_prune.preflight import check_tracking, check_trainer


@pytest.mark.parametrize(
    ("rest", "expected"),
    [
        (["--cfg"], ["--cfg", "job"]),
        (["--cfg", "hydra"], ["--cfg", "hydra"]),
        (["--cfg", "model=lenet5"], ["--cfg", "job", "model=lenet5"]),
        (["--cfg", "~search.space.lr"], ["--cfg", "job", "~search.space.lr"]),
        (["-c", "-m", "seed=0,1"], ["-c", "job", "-m", "seed=0,1"]),
    ],
)
def test_cfg_keeps_its_choices_and_overrides(rest, expected):
    assert hydra_argv(rest) == expected


def test_cfg_refuses_a_word_that_is_no_choice():
    with pytest.raises(ConfigError, match=r"--cfg takes job, hydra or all .* got 'jobb'"):
        hydra_argv(["--cfg", "jobb"])


def test_plus_adds_keys_inside_groups_but_not_at_the_top():
    cfg = load_config(["+trainer.max_steps=3", "+callbacks.es._target_=x.Y", "~search"])
    assert cfg.trainer.max_steps == 3 and "search" not in cfg
    for override in ("+foo=1", "++foo.bar=2", "+seeds=3"):
        with pytest.raises(ConfigError, match="adds the top-level key"):
            load_config([override])


@pytest.mark.parametrize("uri", ["sqlite://runs/ml2.db", "sqlite://", "sqlite:///"])
def test_a_sqlite_url_without_its_third_slash_is_refused_and_creates_nothing(
    uri, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"use sqlite:///relative/path\.db or sqlite:////"):
        check_tracking(uri)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("settings", "accepted"),
    [
        ({"max_epochs": -1, "max_steps": 5}, True),
        ({"max_epochs": None, "max_steps": -1}, True),
        ({"max_epochs": 0}, False),
        ({"max_epochs": 2, "max_steps": 0}, False),
        ({"max_epochs": 1, "max_steps": -2}, False),
        ({"max_epochs": True}, False),
    ],
)
def test_a_run_needs_a_length(settings, accepted):
    trainer = OmegaConf.create({"accelerator": "cpu", "devices": 1, **settings})
    if accepted:
        check_trainer(trainer)
    else:
        with pytest.raises(ConfigError, match=r"must be an integer >= 1 \(or -1: no limit\)"):
            check_trainer(trainer)


@pytest.mark.parametrize(
    ("beat", "grace", "retry", "message"),
    [
        (10, 30, 2, None),  # the defaults
        (None, 1, 0, None),  # no heartbeats; no retries
        (1, 2, 5, None),
        (-1, 30, 2, "search.heartbeat_interval must be an integer >= 1 or null"),
        (10, 10, 2, r"search.grace_period must be an integer > search.heartbeat_interval \(10\)"),
        (None, None, 2, "search.grace_period must be an integer > 0"),
        (10, 30, None, "search.max_retry must be an integer >= 0"),
        (True, 30, 2, "search.heartbeat_interval"),
    ],
)
def test_heartbeat_settings(beat, grace, retry, message):
    if message is None:
        check_heartbeats(beat, grace, retry)
    else:
        with pytest.raises(ConfigError, match=message):
            check_heartbeats(beat, grace, retry)
