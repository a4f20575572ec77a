"""The grouped batch path runs only the channels each group of inputs keeps, gives the masked
(gated, no skipping) forward's outputs, and counts per input what the batch-1 path runs."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from lightning_prune.dynamic import (
    DynamicGating,
    GroupedSkippingPath,
    SkippingPath,
    attach_gates,
    gated_forward_grouped,
    gated_layers,
    set_budget,
)
from lightning_prune.models import Classifier
from tests.pruning_helpers import tiny_data, trainer


def linear_chain() -> nn.Sequential:
    """Linear layers only, with a LayerNorm the path must hand every channel to."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 96), nn.ReLU(), nn.Linear(96, 64), nn.ReLU(),
        nn.Linear(64, 32), nn.LayerNorm(32), nn.Linear(32, 10),
    )  # fmt: skip


def gated_model(network, budget: float = 0.4, seed: int = 0) -> Classifier:
    """A Classifier with gates whose choices vary per input around a shared core."""
    torch.manual_seed(seed)
    model = Classifier(network).eval()
    attach_gates(model, budget=budget)
    for item in gated_layers(model):
        with torch.no_grad():
            item.gate.weight.normal_(0, 0.3)
            item.gate.bias.copy_(torch.linspace(2, 0, item.gate.channels))
    return model


def images(count: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(count, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("network", ["lenet5", "linear", "vgg_small"])
@pytest.mark.parametrize(("batch", "min_group"), [(1, 64), (37, 1), (96, 8), (96, 96)])
def test_grouped_equals_masked_forward(network, batch, min_group):
    model = gated_model(linear_chain() if network == "linear" else network)
    x = images(batch)
    with torch.no_grad():
        masked = model(x)
    out, ran = gated_forward_grouped(model, x, chain=model.net, min_group=min_group)
    assert out.shape == masked.shape
    assert torch.allclose(out, masked, atol=1e-5, rtol=1e-5)
    assert ran.executed < ran.dense  # work was skipped, gates included
    assert int(ran.per_input.sum()) <= ran.executed


@pytest.mark.parametrize("network", ["lenet5", "linear"])
def test_per_input_macs_are_what_batch1_runs(network):
    model = gated_model(linear_chain() if network == "linear" else network)
    x = images(48)
    _, ran = GroupedSkippingPath(model, model.net, min_group=4)(x)
    single = SkippingPath(model, model.net)
    with torch.no_grad():
        counts = [single(x[i : i + 1])[1] for i in range(len(x))]
    assert ran.per_input.tolist() == [c.executed for c in counts]
    assert ran.dense == sum(c.dense for c in counts)
    assert ran.gate >= sum(c.gate for c in counts)


def test_smaller_groups_run_fewer_macs_and_count_gated_off_channels():
    model = gated_model("lenet5")
    x = images(128)
    _, exact = GroupedSkippingPath(model, model.net, min_group=1)(x)
    _, whole = GroupedSkippingPath(model, model.net, min_group=128)(x)
    assert exact.per_input.tolist() == whole.per_input.tolist()
    assert int(exact.per_input.sum()) <= exact.executed < whole.executed
    for item in gated_layers(model):
        dropped = item.gate.channels - item.gate.keep_count()
        assert int(exact.off[item.name].sum()) == len(x) * dropped
        assert exact.kept[item.name] == (
            len(x) * item.gate.keep_count(),
            len(x) * item.gate.channels,
        )
        assert torch.equal(exact.off[item.name], whole.off[item.name])


def test_full_budget_runs_every_channel():
    model = gated_model("lenet5")
    set_budget(model, 1.0)
    x = images(16)
    out, ran = gated_forward_grouped(model, x, chain=model.net)
    assert torch.allclose(out, model(x), atol=1e-5)
    assert ran.executed == ran.dense + ran.gate


def test_trained_gates_share_channels_and_match():
    pl.seed_everything(0)
    model, data = Classifier("lenet5"), tiny_data()
    trainer([DynamicGating(budget=0.4, ramp_epochs=1)], max_epochs=2).fit(model, datamodule=data)
    model.eval()
    x = data.test[0][:64]
    out, ran = gated_forward_grouped(model, x, chain=model.net, min_group=16)
    assert torch.allclose(out, model(x), atol=1e-5)
    assert int(ran.per_input.sum()) <= ran.executed < ran.dense


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 784))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))

    def forward(self, x):
        return self.head(x.flatten(1) + self.body(x))


def test_bad_uses_are_refused():
    with pytest.raises(ValueError, match="no gates"):
        GroupedSkippingPath(Classifier("lenet5"))
    residual = Residual()
    attach_gates(residual, include=["body.1"])
    with pytest.raises(ValueError, match="needs the nn.Sequential"):
        GroupedSkippingPath(residual)
    model = gated_model("lenet5")
    with pytest.raises(ValueError, match="min_group must be an integer >= 1"):
        GroupedSkippingPath(model, model.net, min_group=0)
    path = GroupedSkippingPath(model, model.net)
    model.train()
    with pytest.raises(ValueError, match="eval mode"):
        path(images(2))
