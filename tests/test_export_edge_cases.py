"""Export helpers on inputs and layers the common paths do not cover: token ids, grouped convs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_prune.export import (
    compact,
    export_onnx,
    measure_latency,
    measure_onnx_latency,
    run_onnx,
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def token_model() -> nn.Module:
    """Integer token ids in: the ONNX input is int64, not float."""
    return nn.Sequential(nn.Embedding(50, 16), nn.Flatten(), nn.Linear(16 * 12, 4)).eval()


def test_export_onnx_verifies_a_model_fed_token_ids(tmp_path) -> None:
    model = token_model()
    x = torch.randint(0, 50, (2, 12))

    path = export_onnx(model, tmp_path / "tokens.onnx", x)  # verify=True runs onnxruntime

    got = torch.from_numpy(run_onnx(path, x.numpy()))
    torch.testing.assert_close(got, model(x).detach(), rtol=1e-4, atol=1e-5)
    other = torch.randint(0, 50, (5, 12))  # the dynamic batch dimension
    got = torch.from_numpy(run_onnx(path, other.numpy().astype("int32")))  # cast to int64
    torch.testing.assert_close(got, model(other).detach(), rtol=1e-4, atol=1e-5)


def test_latency_feeds_token_ids(tmp_path) -> None:
    """Integer inputs get valid ids (zeros), not random floats."""
    model = token_model()
    path = export_onnx(model, tmp_path / "tokens.onnx", torch.randint(0, 50, (1, 12)))

    result = measure_onnx_latency(path, (12,), batch_size=2, repeats=3, warmup=1)
    torch_result = measure_latency(model, (12,), 2, 3, warmup=1, dtype=torch.int64)

    assert result["median_ms"] > 0 and result["repeats"] == 3
    assert torch_result["median_ms"] > 0 and torch_result["repeats"] == 3


def grouped_net(groups: int = 4) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=groups),
        nn.ReLU(),
        nn.Conv2d(16, 3, 1),
    ).eval()


def test_compact_keeps_grouped_conv_with_unevenly_dead_channels_whole() -> None:
    """Removing 5 of 16 channels would leave 11, not divisible by groups=4."""
    model = grouped_net()
    with torch.no_grad():
        for c in [0, 1, 2, 5, 9]:
            model[2].weight[c] = 0
            model[2].bias[c] = 0
        model[0].weight[3] = 0  # a dead input channel of the grouped conv: must stay too
        model[0].bias[3] = 0
    x = torch.randn(2, 3, 8, 8)

    small = compact(model, x)

    assert (small[0].out_channels, small[2].in_channels, small[2].out_channels) == (16, 16, 16)
    assert small[4].in_channels == 16
    torch.testing.assert_close(small(x), model(x), rtol=0, atol=1e-5)
    other = torch.randn(3, 3, 10, 10)
    torch.testing.assert_close(small(other), model(other), rtol=0, atol=1e-5)


def test_compact_still_shrinks_depthwise_conv() -> None:
    """A depthwise conv loses channels together with the conv that feeds it."""
    model = grouped_net(groups=16)
    with torch.no_grad():
        for c in [0, 1, 2, 5, 9]:
            model[0].weight[c] = 0
            model[0].bias[c] = 0
            model[2].weight[c] = 0
            model[2].bias[c] = 0
    x = torch.randn(2, 3, 8, 8)

    small = compact(model, x)

    assert (small[0].out_channels, small[2].out_channels, small[2].groups) == (11, 11, 11)
    torch.testing.assert_close(small(x), model(x), rtol=0, atol=1e-5)
