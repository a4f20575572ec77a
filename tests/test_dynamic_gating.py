"""DynamicGating: per-input gates train with the model's optimizer, the batch-1 path runs only
the kept channels and matches the masked full forward, and bad choices fail before training."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from lightning_prune.dynamic import (
    DynamicGating,
    GatingError,
    attach_gates,
    dense_macs,
    gated_forward_batch1,
    gated_layers,
)
from lightning_prune.models import Classifier
from lightning_prune.pruning import AdaptivePruning
from tests.pruning_helpers import tiny_data, trainer


class GateWatcher(pl.Callback):
    """Copies the gate parameters when training starts (after DynamicGating's setup)."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.before = {
            name: p.detach().clone()
            for name, p in pl_module.named_parameters()
            if ".dynamic_gate." in name
        }


def batch1_report(model: Classifier, data, count: int = 32):
    """Mean kept-channel fraction per gated layer and mean executed MACs fraction."""
    model.eval()
    images = data.test[0][:count]
    kept, fractions = [], []
    for image in images:
        logits, ran = gated_forward_batch1(model, image[None], chain=model.net)
        assert torch.allclose(logits, model(image[None]), atol=1e-5)
        kept += [k / total for k, total in ran.kept.values()]
        fractions.append(ran.fraction)
    return sum(kept) / len(kept), sum(fractions) / len(fractions)


@pytest.mark.parametrize("network", ["lenet5", "lenet300"])
def test_fit_trains_gates_and_meets_budget(network):
    pl.seed_everything(0)
    model, data, watcher = Classifier(network), tiny_data(), GateWatcher()
    gating = DynamicGating(budget=0.3, ramp_epochs=1)
    trainer([gating, watcher], max_epochs=3).fit(model, datamodule=data)
    assert gating.current == pytest.approx(0.3)
    assert watcher.before, "no gate parameters were registered in the model"
    changed = [n for n, p in model.named_parameters() if n in watcher.before]
    assert all(
        not torch.equal(dict(model.named_parameters())[n], watcher.before[n]) for n in changed
    )
    kept, fraction = batch1_report(model, data)
    assert kept == pytest.approx(0.3, abs=0.02)  # ceil(0.3 * channels) / channels
    assert fraction <= 0.3 + 0.05  # later layers also read fewer inputs; gates cost a little
    result = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    accuracy = result.test(model, datamodule=data, verbose=False)[0]["test_acc"]
    assert accuracy > 0.5  # ten classes: chance is 0.1


@pytest.mark.parametrize("network", ["lenet5", "lenet300", "vgg_small"])
def test_batch1_skipping_equals_masked_forward(network):
    torch.manual_seed(0)
    model = Classifier(network).eval()
    attach_gates(model, budget=0.3)
    for item in gated_layers(model):
        nn.init.normal_(item.gate.weight)  # varied choices per input
    for seed in range(4):
        x = torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(seed))
        masked = model(x)
        chained, ran = gated_forward_batch1(model, x, chain=model.net)
        rows_only, ran_rows = gated_forward_batch1(model, x)  # per-layer fallback
        assert torch.allclose(chained, masked, atol=1e-5)
        assert torch.allclose(rows_only, masked, atol=1e-5)
        assert ran.executed < ran_rows.executed < ran.dense == ran_rows.dense
        assert ran.dense == dense_macs(model, x)  # the dense count matches the plain model's


def test_works_beside_adaptive_pruning():
    pl.seed_everything(0)
    model, data = Classifier("lenet5"), tiny_data()
    pruning = AdaptivePruning(target_sparsity=0.5, frequency=2, monitor=None, verbose=False)
    trainer([pruning, DynamicGating(budget=0.5)], max_epochs=2).fit(model, datamodule=data)
    assert not any("dynamic_gate" in name for name in pruning.masks)
    assert pruning.summary()["sparsity"] == pytest.approx(0.5, abs=0.01)
    kept, fraction = batch1_report(model, data, count=8)
    assert kept == pytest.approx(0.5, abs=0.02) and fraction < 0.5


def test_state_dict_loads_with_weights_only(tmp_path):
    torch.manual_seed(0)
    model = Classifier("lenet300").eval()
    attach_gates(model, budget=0.3)
    for item in gated_layers(model):
        nn.init.normal_(item.gate.weight)
    torch.save(model.state_dict(), tmp_path / "gated.pt")
    state = torch.load(tmp_path / "gated.pt", weights_only=True)
    assert any(key.endswith("dynamic_gate.weight") for key in state)
    fresh = Classifier("lenet300").eval()
    attach_gates(fresh)
    fresh.load_state_dict(state)  # strict: the gates and their budget come back
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(fresh(x), model(x))


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))

    def forward(self, x):
        return self.head(x + self.conv(x))


@pytest.mark.parametrize("budget", [0, -0.1, 1.5, True, "0.3", None])
def test_budget_outside_range_is_refused(budget):
    with pytest.raises(GatingError, match="budget must be in"):
        DynamicGating(budget=budget)


@pytest.mark.parametrize(
    ("network", "include", "message"),
    [
        (nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), None, "no gateable layer"),
        ("lenet5", ["net.9*"], "'net.9\\*' matches no"),
        ("lenet5", ["net.7"], "cannot gate layer 'net.7': its output reaches the end"),
        (Residual(), ["net.conv"], "cannot gate layer 'net.conv': its parent 'net' is not"),
        (Residual(), None, "no gateable layer"),
    ],
)
def test_bad_layers_fail_before_training(network, include, message):
    model = Classifier(network)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(GatingError, match=message):
        trainer([DynamicGating(include=include)], max_epochs=1).fit(model, datamodule=tiny_data())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items() if k in before)


def test_other_options_are_checked():
    for options, name in (
        ({"warmup_epochs": -1}, "warmup_epochs"),
        ({"ramp_epochs": "x"}, "ramp_epochs"),
        ({"bins": 0}, "bins"),
        ({"include": [""]}, "include"),
    ):
        with pytest.raises(GatingError, match=name):
            DynamicGating(**options)


def test_budget_warms_up_then_ramps():
    gating = DynamicGating(budget=0.2, warmup_epochs=1, ramp_epochs=2)
    assert [gating.budget_at(p) for p in (0, 0.9, 1, 2, 3, 5)] == pytest.approx(
        [1, 1, 1, 0.6, 0.2, 0.2]
    )


def test_lightning_checkpoint_restores_gates(tmp_path):
    pl.seed_everything(0)
    model, data = Classifier("lenet300"), tiny_data()
    fit = trainer([DynamicGating(budget=0.3, ramp_epochs=0)], max_epochs=1)
    fit.fit(model, datamodule=data)
    fit.save_checkpoint(tmp_path / "gated.ckpt")
    fresh = Classifier("lenet300")
    gating = DynamicGating(budget=0.3)
    tested = trainer([gating], max_epochs=1)
    result = tested.test(fresh, datamodule=data, ckpt_path=tmp_path / "gated.ckpt", verbose=False)
    expected = trainer([], max_epochs=1).test(model, datamodule=data, verbose=False)
    assert result[0]["test_acc"] == pytest.approx(expected[0]["test_acc"])
    assert [item.name for item in gating.layers] == ["net.1", "net.3"]
    x = data.test[0][:4]
    assert torch.equal(fresh.eval()(x), model.eval()(x))


def test_include_gates_only_the_named_layers():
    model = Classifier("lenet5")
    trainer([DynamicGating(include="net.2")], max_epochs=1).fit(model, datamodule=tiny_data())
    assert [item.name for item in gated_layers(model)] == ["net.2"]


class TokenWise(nn.Module):
    """A token-wise feed-forward block on (batch, tokens, features): the chain rule passes it,
    but a gate decides per example and cannot pool a 3-D input."""

    def __init__(self) -> None:
        super().__init__()
        self.ffn = nn.Sequential(nn.Linear(28, 32), nn.ReLU(), nn.Linear(32, 28))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))

    def forward(self, x):
        return self.head(self.ffn(x.squeeze(1)))


def test_a_gated_linear_fed_tokens_names_itself_and_the_fix():
    with pytest.raises(GatingError, match=r"'net\.ffn\.0' got 3-D input .*\(include=\["):
        trainer([DynamicGating()], max_epochs=1).fit(Classifier(TokenWise()), tiny_data())
