"""Regrowth changes the masks (they are not monotone) while sparsity stays on schedule."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from lightning_prune.pruning import AdaptivePruning
from tests.pruning_helpers import ZeroChecker, classifier, tiny_data, trainer


class MaskHistory(pl.Callback):
    """Records the masks and the sparsity after every step (runs after AdaptivePruning)."""

    def __init__(self, pruning: AdaptivePruning) -> None:
        self.pruning = pruning
        self.regrown = 0
        self.sparsity: list[tuple[int, float, float]] = []
        self._previous: dict[str, torch.Tensor] | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        masks = {n: m.clone() for n, m in self.pruning.masks.items()}
        if self._previous is not None:
            self.regrown += sum(int((~self._previous[n] & m).sum()) for n, m in masks.items())
        self._previous = masks
        goal = self.pruning.schedule.goal()
        self.sparsity.append((trainer.global_step, self.pruning.store.sparsity(), goal))


@pytest.mark.parametrize(
    ("regrowth", "criterion"), [("dns", "magnitude"), ("dns", "taylor"), ("rigl", "magnitude")]
)
def test_regrowth_changes_masks_and_keeps_sparsity_on_schedule(regrowth, criterion):
    """With taylor, a pruned weight is scored by |shadow * g|, so DNS can splice it back."""
    pl.seed_everything(0)
    pruning = AdaptivePruning(
        target_sparsity=0.9, frequency=4, start=0.0, end=0.8, regrowth=regrowth,
        criterion=criterion, regrow_fraction=0.3, monitor=None, verbose=False,
    )  # fmt: skip
    history = MaskHistory(pruning)
    checker = ZeroChecker(pruning)
    fit = trainer([pruning, history, checker], max_epochs=3)
    fit.fit(classifier(), tiny_data())
    assert history.regrown > 0, "regrowth never brought a pruned weight back"
    # after every mask update the sparsity equals the schedule's goal (prune and regrow balance)
    update_steps = [s for s, _, _ in history.sparsity if s % 4 == 1]
    assert update_steps
    for step, sparsity, goal in history.sparsity:
        if (step - 1) % 4 == 0:
            assert sparsity == pytest.approx(goal, abs=2e-3), (step, sparsity, goal)
    assert pruning.summary()["sparsity"] == pytest.approx(0.9, abs=1e-3)


def test_no_regrowth_masks_are_monotone():
    pl.seed_everything(0)
    pruning = AdaptivePruning(
        target_sparsity=0.9, frequency=4, end=0.8, monitor=None, verbose=False
    )
    history = MaskHistory(pruning)
    trainer([pruning, history], max_epochs=2).fit(classifier(), tiny_data())
    assert history.regrown == 0


def test_dns_shadow_weights_follow_the_masked_out_gradient():
    pl.seed_everything(0)
    pruning = AdaptivePruning(
        target_sparsity=0.8, frequency=4, end=0.5, regrowth="dns", monitor=None, verbose=False
    )
    trainer([pruning], max_epochs=2).fit(classifier(), tiny_data())
    shadows = pruning.shadows.values["net.1.weight"]
    mask = pruning.masks["net.1.weight"]
    assert shadows[~mask].abs().sum() > 0  # pruned weights keep a live shadow value
