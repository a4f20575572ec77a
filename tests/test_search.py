"""End-to-end searches in this process: real Optuna storage, real MLflow store, tiny data."""

from __future__ import annotations

import math

import optuna
from lightning_prune.search import (
    best_trials,
    checkpoint_path,
    checkpoint_roots,
    load_study,
    run_search,
)
from mlflow import MlflowClient
from optuna.trial import TrialState

from lightning_prune.checkpoint import load_model
from lightning_prune.config import load_config
from tests.search_helpers import tiny

CONTRACT = (
    "checkpoint",
    "mlflow_run_id",
    "sparsity",
    "nonzero_params",
    "flops",
    "val_acc",
    "test_acc",
)


def _runs(uri: str) -> dict[str, object]:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("lightning-prune")
    return {r.info.run_id: r for r in client.search_runs([experiment.experiment_id])}


def test_search_records_trials_resumes_and_keeps_the_contract(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    demand = [
        "search.demand.min_sparsity=0.6",
        "search.pruner.kind=none",
        "search.n_trials=3",
        "search.study_name=s1",
        "search.space.target_sparsity.low=0.3",
    ]
    study = run_search(load_config(tiny(tmp_path, *demand)))
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 3
    first = {t.number: t.params for t in study.trials}

    # A rerun adds its n_trials (as study.optimize): old trials kept, 5 in total.
    capfd.readouterr()
    again = [*demand[:-1], "search.n_trials=2", "search.study_name=s1", "search.max_trials=5"]
    study = run_search(load_config(tiny(tmp_path, *again)))
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(study.trials) == 5 and len(complete) == 5
    assert {t.number: t.params for t in study.trials[:3]} == first
    assert "this run added 2 of search.n_trials=2 trials (2 complete" in capfd.readouterr().err
    # At search.max_trials, a rerun adds nothing and says so.
    study = run_search(load_config(tiny(tmp_path, *again)))
    assert len(study.trials) == 5
    assert "already holds search.max_trials=5 finished trials" in capfd.readouterr().err

    reloaded = load_study(f"sqlite:///{tmp_path}/optuna.db", "s1")
    attrs = reloaded.user_attrs
    assert {"mlflow_parent_run_id", "tracking_uri", "experiment", "config"} <= set(attrs)
    assert attrs["config"]["search"]["demand"]["min_sparsity"] == 0.6
    runs = _runs(attrs["tracking_uri"])
    parent = runs[attrs["mlflow_parent_run_id"]]
    assert parent.info.status == "FINISHED" and "val_acc" in parent.data.metrics
    client = MlflowClient(attrs["tracking_uri"])
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert "plots/optimization_history.png" in plots
    for trial in reloaded.trials:
        assert set(CONTRACT) <= set(trial.user_attrs)
        assert trial.value == trial.user_attrs["val_acc"]
        violation = trial.constraints["min_sparsity"]
        assert math.isclose(violation, 0.6 - trial.user_attrs["sparsity"], abs_tol=1e-9)
        assert trial.user_attrs["feasible"] == (violation <= 0)
        assert trial.user_attrs["checkpoint"] == f"trial_{trial.number}/model.pt"
        path = checkpoint_path(trial, checkpoint_roots(reloaded))
        assert path == tmp_path / "runs" / "studies" / "s1" / f"trial_{trial.number}" / "model.pt"
        model, info = load_model(path)
        assert info["trial"] == trial.number
        child = runs[trial.user_attrs["mlflow_run_id"]]
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.tags["trial_state"] == "COMPLETE"
        assert child.data.params["lr"] == str(trial.params["lr"])
        assert {"val_acc", "sparsity", "test_acc", "duration_s"} <= set(child.data.metrics)
        history = client.get_metric_history(child.info.run_id, "val_acc")
        assert len(history) >= 2  # one point per validation plus the final value
        assert "model.pt" in {a.path for a in client.list_artifacts(child.info.run_id)}
    # Infeasible trials never win.
    best = best_trials(reloaded)
    assert all(t.user_attrs["sparsity"] >= 0.6 for t in best)
    if best:
        assert reloaded.best_trial.number == best[0].number


def _failing_study(tmp_path, name: str, *space: str):
    overrides = tiny(
        tmp_path,
        "search.n_trials=2",
        f"search.study_name={name}",
        "search.pruner.kind=none",
        *space,
    )
    return run_search(load_config(overrides))


def test_failing_trials_are_recorded_and_the_study_goes_on(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = None
    # lr 1e30 overflows to NaN; an unknown criterion raises when the callback is built.
    cases = {
        "nan": (
            ["~search.space.lr", "+search.space.lr={target: model.lr, choices: [1.0e30]}"],
            "NonFiniteLossError: training loss became nan",
        ),
        "raise": (
            ["search.space.criterion.choices=[nonsense]"],
            "ConfigError: pruning: criterion must be one of",
        ),
    }
    for name, (space, expected) in cases.items():
        study = _failing_study(tmp_path, f"fail-{name}", *space)
        assert [t.state for t in study.trials] == [TrialState.FAIL] * 2  # it went on
        runs = _runs(f"sqlite:///{tmp_path}/mlflow.db")
        for trial in study.trials:
            reason = trial.user_attrs["fail_reason"]
            assert expected in reason
            child = runs[trial.user_attrs["mlflow_run_id"]]
            assert child.data.tags["trial_state"] == "FAIL"
            assert child.data.tags["fail_reason"] == reason
            assert child.info.status == "FAILED"


def test_multi_objective_front_is_reported(tmp_path, monkeypatch, capsys):
    from lightning_prune.report import print_report

    monkeypatch.chdir(tmp_path)
    overrides = tiny(
        tmp_path,
        "search.objective=pareto",
        "search.n_trials=3",
        "search.study_name=front",
        "search.space.target_sparsity.low=0.3",
    )
    study = run_search(load_config(overrides))
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MAXIMIZE"]
    front = study.best_trials
    assert front
    for trial in front:
        assert trial.values == [trial.user_attrs["val_acc"], trial.user_attrs["sparsity"]]
    print_report(study)
    out = capsys.readouterr().out
    assert "Pareto front" in out and f"{front[0].number}" in out
    parent = _runs(study.user_attrs["tracking_uri"])[study.user_attrs["mlflow_parent_run_id"]]
    client = MlflowClient(study.user_attrs["tracking_uri"])
    assert "plots/pareto_front.png" in {
        a.path for a in client.list_artifacts(parent.info.run_id, "plots")
    }
    assert optuna.load_study  # the study is also readable without our helpers
