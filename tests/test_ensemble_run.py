"""The ensemble file, Lightning test/predict, the `ensemble` command and its MLflow records."""

from __future__ import annotations

import mlflow
import optuna
import pytest
import pytorch_lightning as pl
import torch
from lightning_prune.ensembles import (
    SelectionError,
    fit_ensemble,
    load_ensemble,
    run_ensemble,
    save_ensemble,
    select_members,
)
from lightning_prune.ensembles.artifact import FORMAT
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from lightning_prune.cli import main
from lightning_prune.config import ConfigError, load_config
from tests.conftest import run_cli
from tests.ensemble_helpers import DATA, datamodule, make_study, mlflow_parent, snapshot
from tests.ensemble_helpers import train_member as _train

optuna.logging.set_verbosity(optuna.logging.WARNING)
GUARDED = {**DATA, "_target_": "tests.ensemble_helpers.GuardedData"}


@pytest.fixture(scope="module")
def members(tmp_path_factory) -> list[dict]:
    folder = tmp_path_factory.mktemp("members")
    return [_train(folder, seed) for seed in range(3)]


def _fitted(members, storage: str, weighting: str = "optimized"):
    study = make_study(storage, members)
    selection = select_members(study, 3)
    data = datamodule()
    return selection, fit_ensemble(selection.members, data.val_dataloader(), weighting), data


def test_file_loads_with_weights_only_and_predicts_the_same(members, in_tmp):
    selection, ensemble, data = _fitted(members, f"sqlite:///{in_tmp / 'o.db'}", "greedy")
    configs = [m.model_config for m in selection.members]
    path = save_ensemble(
        in_tmp / "e.pt", ensemble, configs, [m.summary() for m in selection.members]
    )
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == FORMAT and len(raw["members"]) == 3
    loaded, info = load_ensemble(path)
    x = data.val[0][:32]
    assert torch.equal(loaded.weights, ensemble.weights)
    assert torch.allclose(loaded(x), ensemble(x), atol=1e-6)
    assert [m["trial"] for m in info["members"]] == [m.trial for m in selection.members]
    with pytest.raises(FileNotFoundError, match="ensemble file not found"):
        load_ensemble(in_tmp / "nothing.pt")


def test_lightning_test_and_predict_use_the_ensemble(members, in_tmp):
    _, ensemble, data = _fitted(members, f"sqlite:///{in_tmp / 'o.db'}")
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    metrics = trainer.test(ensemble, datamodule=data, verbose=False)[0]
    x, y = data.test
    log_probs = ensemble(x)
    assert metrics["test_acc"] == pytest.approx(float((log_probs.argmax(-1) == y).float().mean()))
    assert metrics["test_loss"] == pytest.approx(float(torch.nn.functional.nll_loss(log_probs, y)),
                                                 rel=1e-4)  # fmt: skip
    probs = torch.cat(trainer.predict(ensemble, datamodule=data))
    assert probs.shape == (len(y), 10) and torch.allclose(probs.sum(-1), torch.ones(len(y)))


def test_command_records_a_nested_run_and_a_loadable_mlflow_model(members, in_tmp):
    uri = f"sqlite:///{in_tmp / 'runs' / 'mlflow.db'}"
    storage = f"sqlite:///{in_tmp / 'optuna.db'}"
    parent = mlflow_parent(uri, "exp")
    study = make_study(storage, members, name="s", extra_attrs={
        "mlflow_parent_run_id": parent, "tracking_uri": uri, "experiment": "exp"})  # fmt: skip
    study.set_user_attr("config", {"data": GUARDED})  # test split opens only for evaluation
    before = snapshot(study)
    cfg = load_config([f"ensemble.storage={storage}", "ensemble.study_name=s", "ensemble.k=4",
                       "ensemble.weighting=score", "ensemble.latency_batch=16",
                       f"allow_targets=[{GUARDED['_target_']}]"])  # fmt: skip
    result = run_ensemble(cfg)
    assert snapshot(study) == before
    assert result.notes and "asked for k=4" in result.notes[0]
    assert result.report.costs["nonzero_params"] < 3 * result.report.costs["dense_params"]
    run = MlflowClient(uri).get_run(result.run_id)
    assert run.data.tags[MLFLOW_PARENT_RUN_ID] == parent and run.info.status == "FINISHED"
    assert run.data.params["weighting"] == "score" and "member_2_weight" in run.data.params
    assert run.data.metrics["ensemble_test_acc"] == pytest.approx(
        result.report.ensemble["test_acc"]
    )
    names = {a.path for a in MlflowClient(uri).list_artifacts(result.run_id)}
    assert {"members.json", result.artifact.name} <= names
    mlflow.set_tracking_uri(uri)
    served = mlflow.pytorch.load_model(result.model_uri)
    x = datamodule().val[0][:16]
    assert torch.allclose(served(x), result.ensemble(x), atol=1e-6)
    reloaded, _ = load_ensemble(result.artifact)
    assert torch.allclose(reloaded(x), result.ensemble(x), atol=1e-6)


def test_bad_settings_fail_before_the_study_is_opened(in_tmp):
    missing = f"sqlite:///{in_tmp / 'none.db'}"
    with pytest.raises(ConfigError, match="ensemble.weighting must be one of"):
        run_ensemble(load_config([f"ensemble.storage={missing}", "ensemble.weighting=mean"]))
    with pytest.raises(SelectionError, match="no Optuna storage"):
        run_ensemble(load_config([f"ensemble.storage={missing}"]))
    assert not (in_tmp / "none.db").exists()


def test_cli_prints_the_table_and_names_a_missing_study(members, in_tmp, capsys):
    storage = f"sqlite:///{in_tmp / 'optuna.db'}"
    make_study(storage, members, name="s")
    ok = run_cli("ensemble", f"ensemble.storage={storage}", "ensemble.study_name=s",
                 "ensemble.k=2", "ensemble.log_mlflow=false", "ensemble.latency_batch=8",
                 cwd=in_tmp)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "best member" in ok.stdout and "one dense model" in ok.stdout
    assert (in_tmp / "runs" / "ensembles" / "s-optimized.pt").is_file()
    assert main(["ensemble", f"ensemble.storage={storage}", "ensemble.study_name=t"]) == 2
    stderr = capsys.readouterr().err
    assert "no study 't'" in stderr and "['s']" in stderr


@pytest.mark.slow
def test_end_to_end_through_the_search_with_a_deleted_checkpoint(in_tmp):
    from lightning_prune.search import checkpoint_path, checkpoint_roots, run_search

    overrides = [
        "data=synthetic", "data.num_train=256", "data.num_val=64", "data.num_test=64",
        "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "search.progress=false",
        "search.n_trials=3", "search.pruner.kind=none", "search.space.frequency.low=2",
        "search.space.frequency.high=8", f"output_dir={in_tmp}/runs",
        f"tracking.uri=sqlite:///{in_tmp}/mlflow.db", f"search.storage=sqlite:///{in_tmp}/o.db",
    ]  # fmt: skip
    study = run_search(load_config(overrides))
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    checkpoint_path(done[0], checkpoint_roots(study)).unlink()  # recovered from MLflow
    result = run_ensemble(load_config([*overrides, "ensemble.k=5", "ensemble.latency_batch=8"]))
    assert {m.trial for m in result.members} == {t.number for t in done}
    run = MlflowClient(f"sqlite:///{in_tmp}/mlflow.db").get_run(result.run_id)
    assert run.data.tags[MLFLOW_PARENT_RUN_ID] == study.user_attrs["mlflow_parent_run_id"]
