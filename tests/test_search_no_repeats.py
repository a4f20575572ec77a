"""Every trial is a new recipe: resumed searches, workers and machines sharing a study never
replay the sampler's draws, an exact repeat is refused before training, and an ensemble never
takes two copies of one model."""

from __future__ import annotations

import optuna
import pytest
import torch
from lightning_prune.ensembles import select_members
from lightning_prune.search import load_study, run_search, space
from lightning_prune.search.contract import StudyAttr, TrialAttr, make_storage
from lightning_prune.search.study_factory import make_sampler
from lightning_prune.search.worker import MAX_REPEATS
from optuna.trial import TrialState

from lightning_prune.checkpoint import load_model, save_model
from lightning_prune.config import load_config
from tests.conftest import run_cli
from tests.ensemble_helpers import DATA, GuardedData, make_study, train_member
from tests.search_helpers import cli, tiny

optuna.logging.set_verbosity(optuna.logging.WARNING)
TRAINED = (TrialState.COMPLETE, TrialState.PRUNED)


def _recipes(study: optuna.Study, states=TRAINED) -> list[tuple]:
    return [tuple(sorted(t.params.items())) for t in study.get_trials(states=states)]


def _sample(cfg, storage: str, name: str, n: int) -> optuna.Study:
    """`n` trials of the real search space with the search's sampler, as a new process would."""
    params = space.parse_space(cfg)
    study = optuna.create_study(
        storage=make_storage(storage, heartbeat_interval=None),
        study_name=name,
        sampler=make_sampler(cfg.search),
        load_if_exists=True,
    )
    for _ in range(n):
        trial = study.ask()
        chosen = space.suggest(trial, params)
        study.tell(trial, float(chosen["target_sparsity"]) - float(chosen["lr"]))
    return study


def test_the_seed_reproduces_a_fresh_run_and_no_later_run_replays_it(tmp_path):
    cfg = load_config(tiny(tmp_path, "search.seed=7", "search.sampler=random"))
    db = f"sqlite:///{tmp_path}/s.db"
    first = _recipes(_sample(cfg, db, "a", 4))
    assert _recipes(_sample(cfg, db, "b", 4)) == first  # same seed, fresh study: same recipes
    resumed = _sample(cfg, db, "a", 4)  # a resumed search: a new sampler, same seed
    assert len(set(_recipes(resumed))) == 8
    for _ in range(3):  # three machines (or worker processes) joining one study in turn
        joined = _sample(cfg, db, "c", 1)
    assert len(set(_recipes(joined))) == 3


def test_a_resumed_search_trains_no_recipe_twice_and_refuses_an_exact_repeat(tmp_path):
    args = tiny(tmp_path, "search.study_name=resume", "search.dense_reference=false")
    done = run_cli("search", *args, "search.n_trials=3", cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    storage = f"sqlite:///{tmp_path}/optuna.db"
    study = load_study(storage, "resume")
    study.enqueue_trial(study.trials[0].params)  # a replayed draw, as the old seeding made
    done = run_cli("search", *args, "search.n_trials=2", cwd=tmp_path)  # adds 2
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    study = load_study(storage, "resume")
    assert len(_recipes(study)) == 5 == len(set(_recipes(study)))
    refused = [t for t in study.trials if TrialAttr.DUPLICATE_OF in t.user_attrs]
    assert [(t.number, t.state, t.user_attrs[TrialAttr.DUPLICATE_OF]) for t in refused] == [
        (3, TrialState.FAIL, 0)
    ]  # only the planted repeat: the sampler itself never drew one
    assert "repeat trial 0" in refused[0].user_attrs[TrialAttr.FAIL_REASON]
    assert TrialAttr.MLFLOW_RUN_ID not in refused[0].user_attrs  # refused before training


def test_an_exhausted_space_stops_the_search_instead_of_repeating_recipes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space_of_two = (
        "+search.space={criterion: {target: pruning.criterion, choices: [magnitude, taylor]}}"
    )
    cfg = load_config(
        tiny(tmp_path, "~search.space", space_of_two, "search.n_trials=4",
             "search.dense_reference=false")
    )  # fmt: skip
    study = run_search(cfg)
    assert sorted(_recipes(study)) == [(("criterion", "magnitude"),), (("criterion", "taylor"),)]
    refused = [t for t in study.trials if TrialAttr.DUPLICATE_OF in t.user_attrs]
    assert len(refused) >= MAX_REPEATS and {t.state for t in refused} == {TrialState.FAIL}
    assert study.user_attrs[StudyAttr.LAST_OUTCOME] == "incomplete"


def test_two_commands_started_together_on_an_empty_database_share_the_study(tmp_path, postgres_url):
    args = tiny(
        tmp_path,
        "search.study_name=together",
        "search.n_trials=4",
        "search.max_trials=4",
        "search.dense_reference=false",
    )  # two machines fill one study of 4
    bare = postgres_url.replace("postgresql+psycopg2://", "")
    procs = [  # two machines, each worker 0, with the README's spellings of one database
        cli("search", *args, f"search.storage={scheme}://{bare}", cwd=tmp_path)
        for scheme in ("postgresql", "postgres")
    ]
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], "\n".join(outputs)[-4000:]
    study = load_study(postgres_url, "together")
    assert len(_recipes(study)) == 4 == len(set(_recipes(study)))
    assert not [t.number for t in study.trials if TrialAttr.DUPLICATE_OF in t.user_attrs]
    assert len({t.user_attrs[TrialAttr.WORKER] for t in study.get_trials(states=TRAINED)}) == 2


@pytest.fixture(scope="module")
def members(tmp_path_factory) -> list[dict]:
    folder = tmp_path_factory.mktemp("members")
    return [train_member(folder, seed) for seed in range(2)]


def _reordered(member: dict, folder) -> dict:
    """The same network with its first hidden units permuted: other weights, same outputs."""
    model, info = load_model(member["checkpoint"])
    first, second = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][:2]
    order = torch.randperm(first.out_features, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        first.weight.copy_(first.weight[order])
        first.bias.copy_(first.bias[order])
        second.weight.copy_(second.weight[:, order])
    path = save_model(folder / "reordered" / "model.pt", model, info["model_config"], {})
    return {**member, "checkpoint": str(path.resolve())}


def test_an_ensemble_never_takes_two_copies_of_one_model(members, in_tmp):
    storage = f"sqlite:///{in_tmp / 'optuna.db'}"
    copy = {**members[0]}  # the same checkpoint again: what a replayed recipe produced
    study = make_study(storage, [members[0], copy, members[1]], values=[0.9, 0.89, 0.8])
    chosen = select_members(study, 2)
    assert [m.trial for m in chosen.members] == [0, 2]
    assert chosen.notes == [
        "left out trial 1: a duplicate of trial 0 (same parameters and identical weights); "
        "took the next-ranked trial instead"
    ]
    short = select_members(study, 3)
    assert [m.trial for m in short.members] == [0, 2]
    assert "has only 2 distinct finished feasible trial(s); using 2" in short.notes[-1]
    twin = _reordered(members[0], in_tmp)  # different weights, identical predictions
    study = make_study(storage, [members[0], twin, members[1]], name="twin",
                       values=[0.9, 0.89, 0.8])  # fmt: skip
    loader = GuardedData(**{k: v for k, v in DATA.items() if k != "_target_"}).val_dataloader()
    diverse = select_members(study, 2, diversity="agreement", val_loader=loader, diversity_weight=0)
    assert [m.trial for m in diverse.members] == [0, 2]
    assert "left out trial 1: a duplicate of trial 0 (same parameters and identical " \
           "predictions)" in diverse.notes[0]  # fmt: skip
