"""FLOPs: FlopCounterMode's count for Linear and Conv layers, shape formulas for attention and
RNNs, pruned weights scaled by their density."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lightning_prune.models.networks import build_network
from lightning_prune.pruning.stats import flops, measure_macs


def _library_flops(model: nn.Module, example: torch.Tensor) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(example)
    return counter.get_total_flops()


@pytest.mark.parametrize("name", ["lenet300", "lenet5", "vgg_small"])
def test_dense_flops_of_the_built_in_models_are_flop_counter_modes(name):
    model, example = build_network(name), torch.randn(1, 1, 28, 28)
    assert flops(measure_macs(model, example), {})[1] == _library_flops(model, example)


def test_transposed_grouped_and_dilated_convolutions():
    model = nn.Sequential(
        nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2), nn.Conv2d(6, 8, 3, groups=2, dilation=2)
    )
    example = torch.randn(2, 4, 9, 9)
    macs = measure_macs(model, example)
    assert macs["0.weight"] == 2 * 4 * 9 * 9 * 3 * 3 * 3  # every input pixel: Cout/g x k x k
    assert 2 * sum(macs.values()) == _library_flops(model, example)


def test_attention_and_lstm_weights_are_counted_per_weight():
    attention = nn.MultiheadAttention(16, 4, batch_first=True)
    query, memory = torch.randn(2, 7, 16), torch.randn(2, 3, 16)
    macs = measure_macs(attention, (query, memory, memory))
    assert macs == {"in_proj_weight": 2 * (7 + 3 + 3) * 16 * 16, "out_proj.weight": 2 * 7 * 16 * 16}
    lstm = nn.LSTM(8, 16, num_layers=2, batch_first=True)
    macs = measure_macs(lstm, torch.randn(3, 5, 8))
    assert macs["weight_ih_l0"] == 3 * 5 * 64 * 8 and macs["weight_hh_l1"] == 3 * 5 * 64 * 16


def test_pruned_layers_scale_with_their_density():
    macs = {"a": 100, "b": 300}
    assert flops(macs, {"a": 0.5}) == (2 * (50 + 300), 2 * 400)


def test_a_failing_forward_leaves_no_counter_open():
    class Broken(nn.Linear):
        def forward(self, x):
            raise RuntimeError("broken")

    model = nn.Sequential(Broken(4, 4))
    with pytest.raises(RuntimeError, match="broken"):
        measure_macs(model, torch.randn(1, 4))
    assert torch._C._len_torch_dispatch_stack() == 0
