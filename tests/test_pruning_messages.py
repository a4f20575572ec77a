"""Errors and warnings that tell the user what was found and how to fix it."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from lightning_prune.models import Classifier
from lightning_prune.pruning import AdaptivePruning
from lightning_prune.pruning.selection import select_params
from tests.pruning_helpers import classifier, tiny_data, trainer


def quick(callbacks, **kwargs):
    """One short epoch without a sanity check: a message shows up within a few steps."""
    options = {"max_epochs": 1, "limit_train_batches": 2, "num_sanity_val_steps": 0, **kwargs}
    return trainer(callbacks, **options)


def lazy_net() -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(32), nn.ReLU(), nn.Linear(32, 10))


def test_lazy_module_raises_before_training_naming_it_and_the_fix():
    """A lazy weight has no shape until the first forward, so no mask can be built for it; the
    error must say which module and how to get past it, not torch's generic message."""
    fit = quick([AdaptivePruning(monitor=None, verbose=False)], limit_val_batches=0)
    with pytest.raises(ValueError, match=r"lazy module\(s\) \['net\.1'\]") as raised:
        fit.fit(classifier(lazy_net()), tiny_data())
    message = str(raised.value)
    assert "forward pass before fit" in message
    assert "exclude=['net.1']" in message
    assert fit.global_step == 0


def test_lazy_module_is_pruned_after_the_advised_dummy_forward():
    """The advised fix works: one forward before fit creates the weight and it gets a mask."""
    model = classifier(lazy_net())
    model(torch.zeros(1, 1, 28, 28))
    pruning = AdaptivePruning(monitor=None, verbose=False, frequency=1, start=0.0)
    quick([pruning], limit_val_batches=0).fit(model, tiny_data())
    assert "net.1.weight" in pruning.masks


def weight_norm_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Flatten(), weight_norm(nn.Linear(784, 32)), nn.ReLU(), weight_norm(nn.Linear(32, 10))
    )


def test_parametrized_weights_are_named_and_not_listed_as_prunable():
    """weight_norm computes `weight` from other parameters: it is skipped, and the error says so
    instead of listing the skipped modules as prunable."""
    fit = quick([AdaptivePruning(monitor=None, verbose=False)], limit_val_batches=0)
    with pytest.raises(ValueError, match="no parameter matched") as raised:
        fit.fit(classifier(weight_norm_net()), tiny_data())
    message = str(raised.value)
    assert "['net.1', 'net.3'] are parametrized" in message
    assert "weight_norm" in message
    assert "prunable modules are" not in message
    assert fit.global_step == 0


def test_partly_parametrized_model_lists_only_plain_modules_as_prunable():
    """Only modules with a stored weight are offered as prunable."""
    net = nn.Sequential(weight_norm(nn.Linear(8, 8)), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(
        ValueError, match=r"\['0'\] are parametrized .*prunable modules are \['2'\]"
    ):
        select_params(net, ["0"], [])
    assert [p.name for p in select_params(net, ["*"], [])] == ["2.weight"]


class StepOnlyValAcc(Classifier):
    """Logs the monitored metric per validation step only."""

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        accuracy = (self(x).argmax(-1) == y).float().mean()
        self.log("val_acc", accuracy, on_step=True, on_epoch=False)


def test_monitor_logged_per_step_only_says_so_and_suggests_on_epoch():
    """The metric was logged, as a step value the controller cannot use: 'never logged' would
    send the user looking for a missing self.log call."""
    fit = quick([AdaptivePruning(verbose=False)], limit_val_batches=1)
    with pytest.raises(RuntimeError, match="'val_acc' was logged per step only") as raised:
        fit.fit(StepOnlyValAcc("lenet300"), tiny_data())
    assert "on_epoch=True" in str(raised.value)
    assert "never logged" not in str(raised.value)


def reference_warnings(fit, model) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit.fit(model, tiny_data())
    return [str(w.message) for w in caught if "partly pruned" in str(w.message)]


def test_fast_dev_run_warning_blames_the_short_run_not_start():
    """The default start is already > 0: advising start > 0 would change nothing."""
    fit = trainer([AdaptivePruning(verbose=False)], fast_dev_run=True)
    (message,) = reference_warnings(fit, classifier())
    assert "fast_dev_run" in message
    assert "start > 0" not in message


def test_late_first_validation_warning_suggests_validating_earlier():
    """Pruning waits for the first validation only up to late in the ramp; past that, an
    earlier validation is the fix, not a later start."""
    fit = trainer([AdaptivePruning(verbose=False)], max_epochs=1, num_sanity_val_steps=0)
    (message,) = reference_warnings(fit, classifier())
    assert "val_check_interval" in message
    assert "start > 0" not in message
