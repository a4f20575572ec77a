"""`dynamic=gated` in the product: the config group, what a `train` run records in MLflow, the
checkpoint loading back with its gates, and ensembles of gated members."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch
from lightning_prune.ensembles import (
    WeightedEnsemble,
    collect_log_probs,
    fit_weights,
    load_ensemble,
    save_ensemble,
)
from mlflow import MlflowClient
from omegaconf import OmegaConf

from lightning_prune.checkpoint import load_model
from lightning_prune.cli import main
from lightning_prune.config import load_config, load_preset
from lightning_prune.dynamic import DynamicGating, gated_layers
from lightning_prune.dynamic.usage import measure_usage
from lightning_prune.train import build_data, run_train

RUN = ("data=synthetic", "model=lenet5", "dynamic=gated", "dynamic.budget=0.3",
       "trainer.max_epochs=2", "trainer.enable_progress_bar=false",
       "trainer.accelerator=cpu")  # fmt: skip


def _runs(uri: str) -> list:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("lightning-prune")
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time"])


@pytest.fixture(scope="module")
def gated(tmp_path_factory):
    """Two gated train runs: one through the command line (with structured pruning under the
    gates), one in-process (its trained model kept, to compare the checkpoint against)."""
    root = tmp_path_factory.mktemp("dyn") / "runs"
    uri = f"sqlite:///{root}/mlflow.db"
    code = main(["train", *RUN, f"paths.root={root}", "pruning=structured", "seed=1"])
    assert code == 0
    cfg = load_config([*RUN, f"paths.root={root}"])
    result = run_train(cfg)
    return {"uri": uri, "cfg": cfg, "result": result, "runs": _runs(uri)}


def test_gated_preset_is_every_callback_argument():
    preset = OmegaConf.to_container(load_preset("dynamic", "gated"))
    assert preset.pop("_target_") == "lightning_prune.dynamic.DynamicGating"
    assert set(preset) == set(inspect.signature(DynamicGating).parameters)
    assert preset["budget"] == 0.3 and preset["include"] is None
    assert OmegaConf.to_container(load_config().dynamic) == {}  # the default: no gating


def test_train_records_gate_metrics_and_artifact(gated):
    client = MlflowClient(gated["uri"])
    assert len(gated["runs"]) == 2
    for run in gated["runs"]:
        metrics = run.data.metrics
        assert metrics["dynamic/budget"] == pytest.approx(0.3)
        assert 0 < metrics["dynamic/macs_fraction"] <= 0.3
        per_class = {k: v for k, v in metrics.items() if k.startswith("dynamic/macs_class_")}
        assert sorted(per_class) == sorted(f"dynamic/macs_class_{k}" for k in range(10))
        run_id = run.info.run_id
        history = client.get_metric_history(run_id, "dynamic/macs_fraction")
        assert len(history) >= 3  # each validation, then the final value at the last step
        assert history[-1].step == max(m.step for m in history)
        names = {a.path for a in client.list_artifacts(run_id)}
        assert {"dynamic_gates.json", "model.pt"} <= names
        path = client.download_artifacts(run_id, "dynamic_gates.json", str(gated["cfg"].paths.root))
        saved = json.loads(Path(path).read_text())
        assert saved["layers"] == ["net.0", "net.2", "net.5"]
        assert saved["macs_fraction"] == pytest.approx(metrics["dynamic/macs_fraction"])
        assert saved["samples"] == 128  # the synthetic validation split, under measure_samples
        for layer, channels in (("net.0", 20), ("net.2", 50), ("net.5", 500)):
            top = saved["most_off"][layer]
            assert saved["channels"][layer] == channels and len(top) == 10
            shares = [item["off_fraction"] for item in top]
            assert shares == sorted(shares, reverse=True) and shares[0] > 0.5
    pruned = [r for r in gated["runs"] if "pruning/sparsity" in r.data.metrics]
    assert len(pruned) == 1 and pruned[0].data.metrics["sparsity"] > 0.3


def test_checkpoint_loads_with_weights_only_and_its_gates(gated):
    result = gated["result"]
    raw = torch.load(result.checkpoint, map_location="cpu", weights_only=True)
    assert any(key.endswith(".dynamic_gate.weight") for key in raw["state_dict"])
    model, info = load_model(result.checkpoint)
    assert [item.name for item in gated_layers(model)] == ["net.0", "net.2", "net.5"]
    assert [float(item.gate.budget) for item in gated_layers(model)] == pytest.approx([0.3] * 3)
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), result.model.eval()(x))
    data = build_data(gated["cfg"])
    data.setup("fit")
    usage = measure_usage(model, data.val_dataloader())
    assert usage.mean_fraction == pytest.approx(info["dynamic"]["macs_fraction"])
    assert usage.mean_fraction == pytest.approx(result.metrics["dynamic/macs_fraction"], abs=0.05)


def test_gated_members_make_a_weighted_ensemble(gated, tmp_path):
    other = next(r for r in gated["runs"] if r.info.run_id != gated["result"].run_id)
    paths = [
        gated["result"].checkpoint,
        gated["result"].checkpoint.parent.parent / other.info.run_id / "model.pt",
    ]
    loaded = [load_model(path) for path in paths]
    members, configs = [m for m, _ in loaded], [info["model_config"] for _, info in loaded]
    data = build_data(gated["cfg"])
    data.setup("fit")
    log_probs, labels = collect_log_probs(members, data.val_dataloader(), ["a", "b"])
    ensemble = WeightedEnsemble(members, fit_weights("optimized", log_probs, labels))
    path = save_ensemble(tmp_path / "ens.pt", ensemble, configs)
    again, _ = load_ensemble(path)
    assert all(gated_layers(member) for member in again.members)
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(again(x), ensemble.eval()(x), atol=1e-6)
        assert not torch.allclose(members[0](x), members[1](x))
