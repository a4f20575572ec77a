"""The console script, run as a subprocess the way a user runs it."""

from mlflow import MlflowClient

from tests.conftest import needs_fmnist, run_cli


def test_help_lists_commands_and_config_groups(tmp_path):
    out = run_cli("--help", cwd=tmp_path)
    assert out.returncode == 0
    for word in ("train", "search", "ensemble", "report", "ui", "model", "lenet5", "pruning"):
        assert word in out.stdout


def test_cfg_prints_the_composed_config(tmp_path):
    out = run_cli("train", "--cfg", "model=lenet5", "trainer.max_epochs=3", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "network: lenet5" in out.stdout and "max_epochs: 3" in out.stdout


def test_bad_override_fails_before_training_and_records_nothing(tmp_path):
    out = run_cli("train", "trainer.max_epochz=3", cwd=tmp_path)
    assert out.returncode == 2
    assert "trainer.max_epochz" in out.stderr
    out = run_cli("train", "data.subset=-5", cwd=tmp_path)
    assert out.returncode == 2 and "data.subset" in out.stderr
    assert not (tmp_path / "runs" / "models").exists()


@needs_fmnist
def test_train_end_to_end_records_an_mlflow_run(tmp_path):
    out = run_cli(
        "train", "trainer.max_epochs=1", "data.subset=2000", "data.val_subset=500",
        "data.test_subset=500", "trainer.enable_progress_bar=false", cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "test_acc" in out.stdout and "MLflow run" in out.stdout
    client = MlflowClient(f"sqlite:///{tmp_path}/runs/mlflow.db")
    experiment = client.get_experiment_by_name("lightning-prune")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test_acc"] > 0.5
    assert run.data.params["model/network"] == "lenet300"
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
    assert "model.pt" in artifacts
