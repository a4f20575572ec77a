"""What the gates did, measured: the callback logs `dynamic/budget` and `dynamic/macs_fraction`,
`GateUsage` counts dropped channels and groups MACs by class, and a saved gated model gets its
gates back from the state_dict alone (bins included)."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import MLFlowLogger
from torch import nn

from lightning_prune.checkpoint import load_model, save_model
from lightning_prune.dynamic import DynamicGating, attach_gates, gated_forward_batch1, gated_layers
from lightning_prune.dynamic.restore import restore_gates
from lightning_prune.dynamic.usage import measure_usage
from lightning_prune.models import Classifier
from tests.pruning_helpers import tiny_data, trainer


def test_callback_logs_budget_and_measured_macs(tmp_path):
    pl.seed_everything(0)
    model, data = Classifier("lenet5"), tiny_data()
    gating = DynamicGating(budget=0.3, ramp_epochs=1, measure_samples=40)
    logger = MLFlowLogger("gates", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    fit = trainer([gating], max_epochs=2, logger=logger)
    fit.fit(model, datamodule=data)
    assert float(fit.callback_metrics["dynamic/budget"]) == pytest.approx(0.3)
    logged = float(fit.callback_metrics["dynamic/macs_fraction"])
    assert gating.usage.samples == 40 and logged == pytest.approx(gating.usage.mean_fraction)
    model.eval()
    images = data.val_dataloader().dataset[:40][0]  # the same 40 inputs, one at a time
    fractions = [gated_forward_batch1(model, x[None], chain=model.net)[1].fraction for x in images]
    assert logged == pytest.approx(sum(fractions) / len(fractions))
    history = logger.experiment.get_metric_history(logger.run_id, "dynamic/macs_fraction")
    assert len(history) == 2 and history[-1].value == pytest.approx(logged)


def test_measure_samples_zero_measures_nothing():
    model, data = Classifier("lenet300"), tiny_data()
    gating = DynamicGating(budget=0.5, measure_samples=0)
    fit = trainer([gating], max_epochs=1)
    fit.fit(model, datamodule=data)
    assert gating.usage is None and "dynamic/macs_fraction" not in fit.callback_metrics
    with pytest.raises(ValueError, match="measure_samples"):
        DynamicGating(measure_samples=-1)


def test_usage_counts_the_channels_a_gate_drops_and_groups_by_class():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3)).eval()
    (item,) = attach_gates(model, budget=0.5)
    with torch.no_grad():  # saliency = bias: channels 0, 2 and 4 always win
        item.gate.weight.zero_()
        item.gate.bias.copy_(torch.tensor([5.0, 1.0, 4.0, 0.5, 3.0, 0.1]))
    x, y = torch.randn(10, 8), torch.tensor([0, 1] * 5)
    usage = measure_usage(model, [(x[:4], y[:4]), (x[4:], y[4:])], max_samples=7)
    assert usage.samples == 7 and usage.labels == [0, 1, 0, 1, 0, 1, 0]
    assert usage.off["0"].tolist() == [0, 7, 0, 7, 0, 7]
    top = usage.most_off(top=3)["0"]
    assert [entry["channel"] for entry in top] == [1, 3, 5]
    assert all(entry["off_fraction"] == 1.0 for entry in top)
    # dense: 8*6 + 6*3 = 66 MACs; gated: the gate (6*8) + 3 rows (3*8) + 3 columns (3*3)
    assert usage.mean_fraction == pytest.approx((48 + 24 + 9) / 66)
    assert usage.per_class() == {0: pytest.approx(81 / 66), 1: pytest.approx(81 / 66)}
    assert usage.summary()["macs_fraction_per_class"].keys() == {"0", "1"}


@pytest.mark.parametrize(("network", "bins"), [("lenet300", 16), ("lenet5", 32), ("lenet300", 999)])
def test_saved_gates_come_back_from_the_state_dict(tmp_path, network, bins):
    torch.manual_seed(0)
    model = Classifier(network).eval()
    attach_gates(model, include=None, budget=0.4, bins=bins)
    for item in gated_layers(model):
        nn.init.normal_(item.gate.weight)
    path = save_model(tmp_path / "m.pt", model, {"_target_": "lightning_prune.models.Classifier",
                                                 "network": network}, {})  # fmt: skip
    loaded, _ = load_model(path)
    assert [i.name for i in gated_layers(loaded)] == [i.name for i in gated_layers(model)]
    assert [i.gate.bins for i in gated_layers(loaded)] == [i.gate.bins for i in gated_layers(model)]
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert restore_gates(Classifier(network), {"net.1.weight": torch.zeros(1)}) == []
    with pytest.raises(ValueError, match="lacks"):
        restore_gates(nn.Sequential(nn.Linear(2, 2)), {"net.1.dynamic_gate.weight": x})
