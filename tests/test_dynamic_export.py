"""ONNX export of a gated model: onnxruntime gives torch's outputs, the graph holds the gates
(TopK), and the model handed in is left as it was."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from lightning_prune.dynamic import DynamicGating, attach_gates, gated_layers
from lightning_prune.dynamic.export import export_gated_onnx
from lightning_prune.models import Classifier
from tests.pruning_helpers import tiny_data, trainer

pytest.importorskip("onnxruntime")


def _onnx_outputs(path, x: torch.Tensor):
    from lightning_prune.export import run_onnx

    return torch.from_numpy(run_onnx(path, x.numpy()))


@pytest.mark.parametrize("network", ["lenet5", "lenet300", "vgg_small"])
def test_onnx_outputs_equal_torch(tmp_path, network):
    torch.manual_seed(0)
    model = Classifier(network).eval()
    attach_gates(model, budget=0.3)
    for item in gated_layers(model):
        nn.init.normal_(item.gate.weight)  # gates that differ per input
    path = export_gated_onnx(model, tmp_path / "gated.onnx", torch.randn(4, 1, 28, 28))
    x = torch.randn(16, 1, 28, 28)  # another batch size: the batch axis is dynamic
    with torch.no_grad():
        expected = model(x)
    assert torch.allclose(_onnx_outputs(path, x), expected, atol=1e-5, rtol=0)
    import onnx

    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert {"TopK", "ScatterElements"} <= ops
    assert not any(hasattr(item.gate, "pool_matrix") for item in gated_layers(model))


def test_trained_gated_model_exports(tmp_path):
    pl.seed_everything(0)
    model, data = Classifier("lenet300"), tiny_data()
    trainer([DynamicGating(budget=0.3, measure_samples=0)], max_epochs=1).fit(model, data)
    model.eval()
    path = export_gated_onnx(model, tmp_path / "trained.onnx", data.test[0][:2])
    x = data.test[0][:32]
    with torch.no_grad():
        assert torch.allclose(_onnx_outputs(path, x), model(x), atol=1e-5, rtol=0)


def test_a_model_without_gates_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no gates"):
        export_gated_onnx(Classifier("lenet5"), tmp_path / "x.onnx", torch.randn(1, 1, 28, 28))
