"""Every criterion and allocation prunes a real fit to its target; n:m gives its pattern."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from lightning_prune.pruning import AdaptivePruning
from lightning_prune.pruning.mask_updates import STATS_STRIDE
from tests.pruning_helpers import ZeroChecker, classifier, tiny_data, trainer


@pytest.mark.parametrize(
    ("criterion", "kwargs"),
    [
        ("magnitude", None),
        ("gradient", None),
        ("taylor", None),
        ("activation", {"statistic": "mean"}),
        ("activation", {"statistic": "apoz", "weighted": False}),
        ("random", {"seed": 3}),
        ("hybrid", {"weights": {"magnitude": 1.0, "gradient": 0.5}}),
    ],
)
def test_criterion_reaches_target(criterion, kwargs):
    pl.seed_everything(0)
    pruning = AdaptivePruning(
        target_sparsity=0.7, criterion=criterion, criterion_kwargs=kwargs, frequency=2,
        end=0.6, monitor=None, verbose=False,
    )  # fmt: skip
    checker = ZeroChecker(pruning)
    trainer([pruning, checker], max_epochs=1).fit(classifier(), tiny_data())
    assert pruning.summary()["sparsity"] == pytest.approx(0.7, abs=2e-3)
    assert pruning.stats.required == pruning.criterion.requires


def test_criteria_rank_differently():
    """Gradient-based and magnitude-based masks must differ (the statistics are really used)."""
    masks = {}
    for criterion in ("magnitude", "taylor", "random"):
        pl.seed_everything(0)
        pruning = AdaptivePruning(
            target_sparsity=0.5, criterion=criterion, schedule="oneshot", start=0.5,
            frequency=1, monitor=None, verbose=False,
        )  # fmt: skip
        trainer([pruning], max_epochs=1).fit(classifier(), tiny_data())
        masks[criterion] = pruning.masks["net.1.weight"]
    assert not torch.equal(masks["magnitude"], masks["taylor"])
    overlap = (masks["magnitude"] & masks["random"]).float().mean()
    assert 0.15 < overlap < 0.35  # random keeps ~half of magnitude's half


@pytest.mark.parametrize("allocation", ["global", "layerwise", "lamp"])
def test_allocations_reach_target_with_floors(allocation):
    pl.seed_everything(0)
    pruning = AdaptivePruning(
        target_sparsity=0.95, allocation=allocation, min_density=0.02, output_min_density=0.3,
        frequency=2, end=0.6, monitor=None, verbose=False,
    )  # fmt: skip
    trainer([pruning], max_epochs=1).fit(classifier(), tiny_data())
    layer = pruning.summary()["layer_sparsity"]
    assert pruning.summary()["sparsity"] == pytest.approx(0.95, abs=0.01)
    assert layer["net.5.weight"] <= 0.7 + 1e-6
    assert all(s <= 0.98 + 1e-6 for s in layer.values())
    if allocation == "layerwise":
        assert layer["net.1.weight"] == pytest.approx(0.95, abs=1e-3)
    else:  # data-driven: the big first layer is pruned harder than the middle one
        assert layer["net.1.weight"] > layer["net.3.weight"]


def test_nm_two_four_pattern_along_the_input_dimension():
    pl.seed_everything(0)
    pruning = AdaptivePruning(granularity="n:m", nm="2:4", frequency=2, end=0.5, monitor=None)
    checker = ZeroChecker(pruning)
    trainer([pruning, checker], max_epochs=1).fit(classifier(), tiny_data())
    assert pruning.summary()["target"] == 0.5
    for name, mask in pruning.masks.items():
        blocks = mask.reshape(mask.shape[0], -1, 4)
        assert torch.all(blocks.sum(dim=-1) == 2), name


class _ObservedSteps(pl.Callback):
    """Records the steps at which the Taylor running mean changed (runs after AdaptivePruning)."""

    def __init__(self, pruning: AdaptivePruning) -> None:
        self.pruning, self.steps, self._last = pruning, [], None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        taylor = self.pruning.stats.taylor
        current = sum(float(t.sum()) for t in taylor.values()) if taylor else None
        if current is not None and current != self._last:
            self.steps.append(trainer.global_step)
        self._last = current


def test_gradient_statistics_are_gathered_only_before_mask_updates():
    pl.seed_everything(0)
    pruning = AdaptivePruning(
        target_sparsity=0.8, criterion="taylor", frequency=25, start=0.3, end=0.6,
        monitor=None, verbose=False,
    )  # fmt: skip
    observed = _ObservedSteps(pruning)
    trainer([pruning, observed], max_epochs=5).fit(classifier(), tiny_data(num_train=1024))
    total, window = 160, pruning.stats_window  # 5 epochs of 32 batches
    start, end = pruning.schedule.start_step, pruning.schedule.end_step
    assert (start, end) == (48, 96) and window == 12  # at most half of the 25 between updates
    updates = range(start, end + 25, 25)  # 48, 73 and 98 (the ramp ends on time at 96)
    expected = {  # every STATS_STRIDE-th step of the window before each update, nothing else
        s for u in updates for s in range(u - window + 1, u + 1) if s < end
        and (u - s) % STATS_STRIDE == 0
    }  # fmt: skip
    assert set(observed.steps) == expected and STATS_STRIDE == 2
    assert len(observed.steps) < total / 4
    assert pruning.summary()["sparsity"] == pytest.approx(0.8, abs=2e-3)
