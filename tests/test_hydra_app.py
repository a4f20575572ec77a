"""`lightning-prune <command>` is a Hydra application: multirun, `--cfg job`, `--info`,
`hydra.run.dir`, shell completion, the `callbacks` / `logger` groups and `paths.root`."""

from __future__ import annotations

from pathlib import Path

from mlflow import MlflowClient

from lightning_prune.cli import main

FAST = ["data=synthetic", "trainer.max_epochs=1", "trainer.enable_progress_bar=false"]


def _train_runs(root: Path) -> list:
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    experiment = client.get_experiment_by_name("lightning-prune")
    return client.search_runs([experiment.experiment_id], "tags.job = 'train'")


def test_multirun_runs_one_job_per_combination(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(
        [
            "train",
            "-m",
            "pruning=dns,magnitude_gradual",
            "seed=0,1",
            *FAST,
            f"paths.root={tmp_path}/runs",
        ]
    )  # absolute: MLflow caches stores by URI
    assert code == 0
    runs = _train_runs(tmp_path / "runs")
    assert (
        sorted(r.info.run_name for r in runs) == ["train-dns"] * 2 + ["train-magnitude_gradual"] * 2
    )
    assert {r.data.params["seed"] for r in runs} == {"0", "1"}
    (sweep,) = (tmp_path / "runs" / "multirun").iterdir()
    assert (sweep / "multirun.yaml").is_file() and (sweep / "3").is_dir()


def test_a_bad_value_in_a_multirun_job_stops_it_with_one_line_and_code_2(tmp_path, monkeypatch,
                                                                          capsys):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    assert main(["train", "-m", "trainer.max_epochs=1,ten", "data=synthetic"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]
    assert errors == ["lightning-prune train: error: trainer.max_epochs must be int, got 'ten' "
                      "(default 10)"]  # fmt: skip


def test_cfg_job_and_bare_cfg_print_the_config_and_create_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for flag in (["--cfg", "job"], ["--cfg"]):
        assert main(["search", *flag, "model=lenet5", "search.n_trials=7"]) == 0
        out = capsys.readouterr().out
        assert "network: lenet5" in out and "n_trials: 7" in out
    assert main(["train", "--info"]) == 0
    assert "Hydra" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_hydra_run_dir_and_paths_root_place_the_files(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["train", *FAST, "paths.root=elsewhere", "hydra.run.dir=hydra-here",
            "hydra.output_subdir=.hydra"]  # fmt: skip
    assert main(args) == 0
    assert f"paths.root=elsewhere ({tmp_path / 'elsewhere'})" in capsys.readouterr().out
    assert (tmp_path / "hydra-here" / ".hydra" / "config.yaml").is_file()
    assert len(_train_runs(tmp_path / "elsewhere")) == 1
    assert (tmp_path / "elsewhere" / "models").is_dir() and not (tmp_path / "runs").exists()


def test_callbacks_and_logger_groups_add_lightning_callbacks_and_loggers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["train", *FAST, "trainer.max_epochs=2", "pruning=magnitude_gradual",
            "callbacks=[early_stopping,model_checkpoint,lr_monitor]", "logger=csv",
            f"paths.root={tmp_path}/runs"]  # absolute: MLflow caches stores by URI  # fmt: skip
    assert main(args) == 0
    assert (tmp_path / "runs" / "checkpoints" / "last.ckpt").is_file()
    (metrics,) = (tmp_path / "runs" / "logs" / "csv").glob("version_*/metrics.csv")
    assert "val_acc" in metrics.read_text().splitlines()[0]
    (run,) = _train_runs(tmp_path / "runs")
    assert "lr-Adam" in run.data.metrics  # the LearningRateMonitor logged to MLflow too


def test_a_callback_target_outside_the_allow_list_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["train", *FAST, "+callbacks.evil._target_=os.system", "+callbacks.evil.command=true"]
    assert main(args) == 2
    assert "callbacks.evil" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_shell_completion_completes_commands_and_overrides(monkeypatch, capsys):
    monkeypatch.setenv("COMP_LINE", "lightning-prune tr")
    assert main(["-sc", "query=bash"]) == 0
    assert capsys.readouterr().out.split() == ["train"]
    monkeypatch.setenv("COMP_LINE", "lightning-prune train pruning=d")
    assert main(["-sc", "query=bash"]) == 0
    assert "pruning=dns" in capsys.readouterr().out.split()
