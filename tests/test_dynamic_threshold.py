"""Threshold gates: the budget holds on average, inputs differ in cost, and every path
(batch 1, grouped batches, checkpoints, ONNX) gives the masked model's outputs."""

from __future__ import annotations

import importlib.util

import pytest
import pytorch_lightning as pl
import torch

from lightning_prune.dynamic import (
    DynamicGating,
    GatingError,
    gated_forward_batch1,
    gated_forward_grouped,
    gated_layers,
)
from lightning_prune.dynamic.restore import restore_gates
from lightning_prune.models import Classifier
from tests.pruning_helpers import tiny_data, trainer


@pytest.fixture(scope="module")
def trained():
    """LeNet-5 trained 3 epochs with threshold gates at budget 0.3, in eval mode."""
    pl.seed_everything(0)
    model, data = Classifier("lenet5"), tiny_data()
    gating = DynamicGating(budget=0.3, ramp_epochs=1, gate="threshold", measure_samples=64)
    trainer([gating], max_epochs=3).fit(model, datamodule=data)
    return model.eval(), data, gating


def test_budget_holds_on_average_and_inputs_differ(trained):
    model, data, gating = trained
    for item in gated_layers(model):
        assert bool(item.gate.calibrated) and float(item.gate.threshold) > 0
    fractions = []
    for image in data.test[0][:48]:
        logits, ran = gated_forward_batch1(model, image[None], chain=model.net)
        assert torch.allclose(logits, model(image[None]), atol=1e-5)
        fractions.append(ran.fraction)
    mean = sum(fractions) / len(fractions)
    assert 0.03 < mean < 0.45  # budget 0.3 per layer compounds through the chain
    assert max(fractions) - min(fractions) > 0.01  # not one cost for every input
    assert gating.usage is not None and gating.usage.mean_fraction == pytest.approx(mean, abs=0.1)


def test_grouped_batches_equal_the_masked_forward(trained):
    model, data, _ = trained
    x = data.test[0][:40]
    with torch.inference_mode():
        masked = model(x)
    logits, ran = gated_forward_grouped(model, x, chain=model.net)
    assert torch.allclose(logits, masked, atol=1e-5)
    singles = [gated_forward_batch1(model, image[None], chain=model.net)[1] for image in x]
    assert ran.per_input.tolist() == [single.executed for single in singles]


def test_a_saved_state_dict_restores_threshold_gates(trained, tmp_path):
    model, data, _ = trained
    torch.save(model.state_dict(), tmp_path / "gated.pt")
    state = torch.load(tmp_path / "gated.pt", weights_only=True)
    fresh = Classifier("lenet5")
    restore_gates(fresh, state)
    fresh.load_state_dict(state)
    fresh.eval()
    x = data.test[0][:16]
    assert all(item.gate.mode == "threshold" for item in gated_layers(fresh))
    assert torch.allclose(fresh(x), model(x), atol=1e-6)


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="needs onnxruntime")
def test_onnx_export_gives_the_same_outputs(trained, tmp_path):
    from lightning_prune.dynamic.export import export_gated_onnx
    from lightning_prune.export import run_onnx

    model, data, _ = trained
    x = data.test[0][:8]
    path = export_gated_onnx(model, tmp_path / "gated.onnx", x)
    assert torch.allclose(torch.as_tensor(run_onnx(path, x.numpy())), model(x), atol=1e-5)


def test_an_unknown_gate_is_refused():
    with pytest.raises(GatingError, match="gate must be one of"):
        DynamicGating(gate="sometimes")
