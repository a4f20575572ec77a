"""`search.n_trials` adds trials per command; `search.max_trials` caps the study.

Quota decisions are checked on real Optuna studies; a command's own count is what it stamped,
whatever other commands (machines) add to the same study at the same time."""

from __future__ import annotations

import optuna
from lightning_prune.search import run_search
from lightning_prune.search.contract import TrialAttr
from lightning_prune.search.quota import TrialQuota, quota_of
from omegaconf import OmegaConf
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from lightning_prune.config import load_config
from tests.search_helpers import tiny


def _study(*owners_and_states: tuple[str, TrialState]) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    for owner, state in owners_and_states:
        value = 0.5 if state == TrialState.COMPLETE else None
        study.add_trial(create_trial(
            state=state, value=value, params={"x": 0.1},
            distributions={"x": FloatDistribution(0, 1)},
            user_attrs={TrialAttr.INVOCATION: owner},
        ))  # fmt: skip
    return study


def test_a_command_counts_only_its_own_trials():
    done, running = TrialState.COMPLETE, TrialState.RUNNING
    study = _study(("other", done), ("other", done), ("other", done), ("me", done))
    me = TrialQuota(n_trials=2, invocation="me")
    trials = study.get_trials()
    assert not me.done(trials) and not me.full(trials)  # 4 in the study, 1 of mine
    study.add_trial(create_trial(state=running, user_attrs={TrialAttr.INVOCATION: "me"}))
    trials = study.get_trials()
    assert me.full(trials) and not me.done(trials)  # my second runs: wait for it
    assert me.finished_mine(trials) == 1


def test_max_trials_caps_the_study_whoever_added_them():
    done = TrialState.COMPLETE
    study = _study(("a", done), ("b", done), ("b", done))
    trials = study.get_trials()
    assert TrialQuota(n_trials=10, max_trials=3, invocation="c").done(trials)
    assert not TrialQuota(n_trials=10, max_trials=4, invocation="c").done(trials)


def test_failed_interrupted_and_duplicate_trials_do_not_use_up_the_quota():
    study = _study(("me", TrialState.COMPLETE))
    for attr in (TrialAttr.INTERRUPTED, TrialAttr.DUPLICATE_OF):
        study.add_trial(create_trial(state=TrialState.FAIL,
                                     user_attrs={TrialAttr.INVOCATION: "me", attr: 1}))  # fmt: skip
    assert not TrialQuota(n_trials=2, invocation="me").done(study.get_trials())


def test_the_later_of_two_workers_asking_for_the_last_slot_gives_it_back():
    study = _study(("me", TrialState.COMPLETE))
    quota = TrialQuota(n_trials=2, invocation="me")
    first, second = study.ask(), study.ask()
    quota.claim(first)
    quota.claim(second)
    assert not quota.surplus(study, first.number)
    assert quota.surplus(study, second.number)
    # Another command's trials never make mine surplus; a cap on the study does.
    other = TrialQuota(n_trials=1, invocation="other")
    late = study.ask()
    other.claim(late)
    assert not other.surplus(study, late.number)
    assert TrialQuota(n_trials=1, max_trials=2, invocation="x").surplus(study, late.number)


def test_the_quota_comes_from_the_search_group():
    assert quota_of(OmegaConf.create({"n_trials": 5, "max_trials": None})).max_trials is None
    quota = quota_of(OmegaConf.create({"n_trials": 5, "max_trials": 9}))
    assert (quota.n_trials, quota.max_trials) == (5, 9)
    assert quota.invocation != quota_of(OmegaConf.create({"n_trials": 5})).invocation


def test_two_commands_on_one_study_each_add_their_n_trials(tmp_path, monkeypatch):
    commands = 2
    monkeypatch.chdir(tmp_path)
    args = tiny(tmp_path, "search.study_name=twice", "search.n_trials=2",
                "search.pruner.kind=none", "search.dense_reference=false")  # fmt: skip
    for _ in range(commands):
        study = run_search(load_config(args))
    by_command: dict[str, int] = {}
    for trial in study.get_trials(states=(TrialState.COMPLETE,)):
        owner = trial.user_attrs[TrialAttr.INVOCATION]
        by_command[owner] = by_command.get(owner, 0) + 1
    assert sorted(by_command.values()) == [2] * commands
