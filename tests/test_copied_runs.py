"""A study's folder copied elsewhere (runs/, the Optuna and MLflow databases) still ensembles
and reports: trials record their checkpoints relative to the study's folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from lightning_prune.ensembles import select_members
from lightning_prune.search import TrialAttr, checkpoint_path, checkpoint_roots, load_study
from optuna.trial import TrialState, create_trial

from tests.conftest import run_cli
from tests.search_helpers import TINY

# Relative locations: run from inside the folder, so the copy is opened where it lies.
HERE = ["output_dir=runs", "tracking.uri=sqlite:///mlflow.db", "search.storage=sqlite:///optuna.db"]
SEARCH = [*TINY, *HERE, "trainer.max_epochs=1", "search.n_trials=2", "search.pruner.kind=none",
          "search.dense_reference=false", "search.study_name=moved"]  # fmt: skip


def _trial(stored: str | None):
    attrs = {} if stored is None else {TrialAttr.CHECKPOINT: stored}
    return create_trial(value=0.5, user_attrs=attrs)


def test_checkpoint_path_reads_relative_and_older_absolute_records(tmp_path):
    copy, first = tmp_path / "copy" / "s", tmp_path / "first" / "s"
    for root in (copy, first):
        (root / "trial_3").mkdir(parents=True)
    (first / "trial_3" / "model.pt").write_bytes(b"x")
    assert checkpoint_path(_trial(None), [copy]) is None
    # Relative: the first root that holds the file, else the first root (for the message).
    assert checkpoint_path(_trial("trial_3/model.pt"), [copy, first]) == first / "trial_3/model.pt"
    assert checkpoint_path(_trial("trial_3/model.pt"), [tmp_path / "none"]) == (
        tmp_path / "none" / "trial_3" / "model.pt"
    )
    (copy / "trial_3" / "model.pt").write_bytes(b"x")
    assert checkpoint_path(_trial("trial_3/model.pt"), [copy, first]) == copy / "trial_3/model.pt"
    # Absolute (older studies): kept while the file exists, else its tail under the roots.
    kept = str(first / "trial_3" / "model.pt")
    assert checkpoint_path(_trial(kept), [copy]) == Path(kept)
    gone = str(tmp_path / "deleted" / "studies" / "s" / "trial_3" / "model.pt")
    assert checkpoint_path(_trial(gone), [copy]) == copy / "trial_3" / "model.pt"
    assert checkpoint_path(_trial(gone), []) == Path(gone)


@pytest.mark.slow
def test_a_copied_folder_ensembles_and_reports(tmp_path):
    """Each command is its own process, as a user runs them (one process would reuse
    MLflow's cached connection to the deleted database)."""
    first, copy = tmp_path / "first", tmp_path / "copy"
    first.mkdir()
    searched = run_cli("search", *SEARCH, cwd=first)
    assert searched.returncode == 0, searched.stderr[-3000:]
    done = load_study(f"sqlite:///{first}/optuna.db", "moved").get_trials(
        states=(TrialState.COMPLETE,)
    )
    assert len(done) == 2
    assert {t.user_attrs[TrialAttr.CHECKPOINT] for t in done} == {
        f"trial_{t.number}/model.pt" for t in done
    }
    shutil.copytree(first, copy)
    shutil.rmtree(first)  # MLflow's copies of the models go with it (its URIs are absolute)

    extra = ["ensemble.k=2", "ensemble.latency_batch=8"]
    ensembled = run_cli("ensemble", *SEARCH, *extra, cwd=copy)
    assert ensembled.returncode == 0, ensembled.stderr[-3000:]
    assert (copy / "runs" / "ensembles" / "moved-optimized.pt").is_file()
    reported = run_cli("report", *SEARCH, cwd=copy)
    assert reported.returncode == 0, reported.stderr[-3000:]
    report = copy / "runs" / "reports" / "moved"
    assert (report / "layer_sparsity.png").is_file()  # the best trial's model was read ...
    assert "read from MLflow" not in (report / "report.md").read_text()  # ... from the copy

    study = load_study(f"sqlite:///{copy}/optuna.db", "moved")
    studies = copy / "runs" / "studies" / "moved"
    assert checkpoint_roots(study, copy / "runs")[0] == studies
    chosen = select_members(study, 2, output_dir=copy / "runs", download_dir=copy / "downloads")
    assert sorted(m.trial for m in chosen.members) == sorted(t.number for t in done)
    assert all(m.checkpoint.parent.parent == studies for m in chosen.members)
    assert not (copy / "downloads").exists()  # nothing came from MLflow


def test_a_relative_store_is_found_from_another_folder(tmp_path, monkeypatch):
    """Recorded as given (relative); read from the current folder when it is there, else from
    the folder the search ran in."""
    import optuna
    from lightning_prune.search import StudyTracking, tracking_of
    from lightning_prune.search.contract import record_tracking

    first, elsewhere = tmp_path / "first", tmp_path / "elsewhere"
    (first / "runs").mkdir(parents=True)
    elsewhere.mkdir()
    (first / "runs" / "mlflow.db").write_bytes(b"")
    study = optuna.create_study()
    monkeypatch.chdir(first)
    record_tracking(study, StudyTracking("sqlite:///runs/mlflow.db", "e", "r"))
    assert tracking_of(study).uri == "sqlite:///runs/mlflow.db"
    monkeypatch.chdir(elsewhere)
    assert tracking_of(study).uri == f"sqlite:///{first}/runs/mlflow.db"
    (elsewhere / "runs").mkdir()
    (elsewhere / "runs" / "mlflow.db").write_bytes(b"")  # a copy here wins
    assert tracking_of(study).uri == "sqlite:///runs/mlflow.db"
