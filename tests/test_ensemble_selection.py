"""Member selection from real Optuna studies, bad input, and the val/test separation."""

from __future__ import annotations

import optuna
import pytest
from lightning_prune.ensembles import (
    WEIGHTINGS,
    OutputSizeError,
    SelectionError,
    evaluate_ensemble,
    fit_ensemble,
    open_study,
    select_members,
)
from lightning_prune.search import ranked_trials
from mlflow import MlflowClient

from tests.ensemble_helpers import (
    DATA,
    GuardedData,
    make_study,
    mlflow_parent,
    snapshot,
    train_member,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def members(tmp_path_factory) -> list[dict]:
    folder = tmp_path_factory.mktemp("members")
    return [train_member(folder, seed) for seed in range(4)]


@pytest.fixture
def storage(in_tmp) -> str:
    return f"sqlite:///{in_tmp / 'optuna.db'}"


def test_top_k_are_the_best_finished_feasible_trials_and_the_study_is_unchanged(members, storage):
    study = make_study(storage, members, values=[0.7, 0.9, 0.8, 0.95],
                       constraints=[0.0, -0.1, -0.2, 0.3])  # fmt: skip  # trial 3 infeasible
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, value=None))
    before = snapshot(study)
    selection = select_members(study, 2)
    assert [m.trial for m in selection.members] == [1, 2]
    assert selection.notes == ["skipped 1 finished trial(s) that are infeasible"]
    assert selection.members[0].summary()["val_acc"] == members[1]["val_acc"]
    assert snapshot(study) == before


def test_pareto_studies_rank_non_dominated_trials_first(members, storage):
    # values [val_acc, sparsity]: trial 2 (0.7, 0.6) is dominated by trial 0 (0.8, 0.9)
    pareto = [{**m, "sparsity": s} for m, s in zip(members[:3], (0.9, 0.5, 0.6), strict=True)]
    study = make_study(storage, pareto, values=[0.8, 0.85, 0.7],
                       directions=("maximize", "maximize"))  # fmt: skip
    assert [t.values for t in study.trials] == [[0.8, 0.9], [0.85, 0.5], [0.7, 0.6]]
    assert [t.number for t in ranked_trials(study)] == [1, 0, 2]
    assert [m.trial for m in select_members(study, 2).members] == [1, 0]


def test_k_above_the_trial_count_uses_what_exists_and_says_so(members, storage):
    study = make_study(storage, members[:2])
    selection = select_members(study, 5)
    assert len(selection.members) == 2
    assert "asked for k=5" in selection.notes[0] and "using 2" in selection.notes[0]
    empty = optuna.create_study(study_name="empty", storage=storage, direction="maximize")
    empty.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    with pytest.raises(SelectionError, match="no finished feasible trials"):
        select_members(empty, 3)
    with pytest.raises(SelectionError, match="ensemble.k must be a positive integer"):
        select_members(study, 0)


def test_recipe_diversity_takes_each_recipe_best_first(members, storage):
    study = make_study(storage, members, values=[0.9, 0.89, 0.8, 0.7],
                       criteria=["magnitude", "magnitude", "taylor", "taylor"])  # fmt: skip
    assert [m.trial for m in select_members(study, 2).members] == [0, 1]
    assert [m.trial for m in select_members(study, 2, diversity="recipe").members] == [0, 2]
    assert [m.trial for m in select_members(study, 3, diversity="recipe").members] == [0, 2, 1]


def test_agreement_diversity_skips_a_copy_of_the_best_member(members, storage):
    copy = {**members[0]}  # same checkpoint: agrees with trial 0 on every validation image
    study = make_study(storage, [members[0], copy, members[2]], values=[0.9, 0.89, 0.8])
    loader = GuardedData(**{k: v for k, v in DATA.items() if k != "_target_"}).val_dataloader()
    plain = select_members(study, 2)
    diverse = select_members(study, 2, diversity="agreement", val_loader=loader)
    assert [m.trial for m in plain.members] == [0, 2]  # a copy is never taken twice
    assert [m.trial for m in diverse.members] == [0, 2]


def test_missing_checkpoint_is_downloaded_from_mlflow_or_named(members, storage, in_tmp):
    uri = f"sqlite:///{in_tmp / 'mlflow.db'}"
    parent = mlflow_parent(uri)
    client = MlflowClient(uri)
    child = client.create_run(client.get_run(parent).info.experiment_id).info.run_id
    client.log_artifact(child, members[0]["checkpoint"])
    gone = str(in_tmp / "deleted" / "model.pt")
    study = make_study(
        storage,
        [{**members[0], "checkpoint": gone, "mlflow_run_id": child},
         {**members[1], "checkpoint": gone, "mlflow_run_id": parent}],  # no artifact there
        values=[0.9, 0.8],
        extra_attrs={"tracking_uri": uri},
    )  # fmt: skip
    first = select_members(study, 1, download_dir=in_tmp / "downloads").members[0]
    assert first.checkpoint.is_file() and first.checkpoint.is_relative_to(in_tmp / "downloads")
    with pytest.raises(SelectionError, match=r"trial 1: checkpoint not found \(local file"):
        select_members(study, 2, download_dir=in_tmp / "downloads")
    no_run = make_study(storage, [{**members[0], "checkpoint": gone}], name="no-run")
    with pytest.raises(SelectionError, match="no MLflow run to download from"):
        select_members(no_run, 1)


def test_members_with_different_output_sizes_are_refused(members, storage, tmp_path_factory):
    seven = train_member(tmp_path_factory.mktemp("seven"), seed=9, num_classes=7)
    study = make_study(storage, [members[0], seven], values=[0.9, 0.8])
    selection = select_members(study, 2)
    data = GuardedData(**{k: v for k, v in DATA.items() if k != "_target_"})
    with pytest.raises(OutputSizeError, match="trial 0: 10, trial 1: 7"):
        fit_ensemble(selection.members, data.val_dataloader(), "uniform")


def test_test_split_never_reaches_selection_or_weight_fitting(members, storage):
    study = make_study(storage, members, criteria=["magnitude", "taylor"] * 2)
    data = GuardedData(**{k: v for k, v in DATA.items() if k != "_target_"})
    for diversity in ("none", "recipe", "agreement"):
        selection = select_members(study, 3, diversity=diversity, val_loader=data.val_dataloader())
        for weighting in WEIGHTINGS:
            fit_ensemble(selection.members, data.val_dataloader(), weighting)
    assert data.test_reads == 0
    data.setup("test")
    ensemble = fit_ensemble(selection.members, data.val_dataloader(), "optimized")
    names = [m.name for m in selection.members]
    report = evaluate_ensemble(ensemble, data.test_dataloader(), names, latency_repeats=2)
    assert data.test_reads > 0
    assert 0.0 <= report.ensemble["test_acc"] <= 1.0


def test_journal_storage_is_read_and_a_missing_file_is_not_created(members, in_tmp):
    from optuna.storages.journal import JournalFileBackend

    path = in_tmp / "optuna.journal"
    journal = optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    make_study(journal, members[:2], name="j", values=[0.7, 0.9])
    study = open_study(f"journal:///{path}", None)  # the only study in the file
    assert [m.trial for m in select_members(study, 1).members] == [1]
    with pytest.raises(SelectionError, match="no Optuna storage"):
        open_study(f"journal:///{in_tmp / 'other.journal'}", "j")
    assert not (in_tmp / "other.journal").exists()
