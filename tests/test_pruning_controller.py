"""The feedback controller: reference, proceed, pause, back off, raise; missing monitor."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl

from lightning_prune.pruning import AdaptivePruning, Controller
from tests.pruning_helpers import classifier, tiny_data, trainer


def drive(controller: Controller, metrics, sparsity=0.5, ramp_done=False):
    kinds = []
    for i, metric in enumerate(metrics):
        decision = controller.observe(metric, i, i > 0, ramp_done, sparsity)
        kinds.append(decision.kind)
    return kinds


def test_falling_metric_pauses_then_backs_off_and_recovery_proceeds():
    controller = Controller("max", tolerance=0.01, patience=2, backoff_step=0.05, target=0.9)
    kinds = drive(controller, [0.90, 0.895, 0.85, 0.84, 0.83, 0.90])
    assert kinds == ["reference", "proceed", "pause", "backoff", "pause", "proceed"]
    assert controller.reference == 0.90
    assert controller.target == pytest.approx(0.45)  # current sparsity 0.5 - 0.05
    assert [e["kind"] for e in controller.events] == kinds
    assert not controller.paused


def test_mode_min_and_auto_raise_until_max_sparsity():
    loss = Controller("min", tolerance=0.1, patience=1, backoff_step=0.02, target=0.5)
    assert drive(loss, [1.0, 1.05, 1.2]) == ["reference", "proceed", "backoff"]
    auto = Controller(
        "max", 0.01, 2, 0.02, target=0.5, auto=True, max_sparsity=0.9, raise_factor=0.5
    )
    kinds = drive(auto, [0.9] * 6, ramp_done=True)
    assert kinds == ["reference", "raise", "raise", "raise", "proceed", "proceed"]
    assert auto.target == pytest.approx(0.9)  # 0.5 -> 0.75 -> 0.875 -> 0.9 (capped)


def test_backoff_stops_auto_from_raising_again():
    auto = Controller("max", 0.01, 1, 0.05, target=0.5, auto=True, max_sparsity=0.99)
    kinds = drive(auto, [0.9, 0.8, 0.9, 0.9], sparsity=0.5, ramp_done=True)
    assert kinds == ["reference", "backoff", "proceed", "proceed"]
    assert auto.target == pytest.approx(0.45)


def test_monitor_never_logged_raises_at_first_validation_naming_the_option():
    pruning = AdaptivePruning(monitor="val_f1", verbose=False, frequency=2)
    fit = trainer([pruning], max_epochs=1)
    with pytest.raises(RuntimeError, match=r"monitor='val_f1'.*val_acc"):
        fit.fit(classifier(), tiny_data())


def test_controller_backs_off_in_a_real_fit_when_pruning_hurts():
    """Pruning 99 % by random scores ruins accuracy: the controller must pause and back off."""
    pl.seed_everything(0)
    pruning = AdaptivePruning(
        target_sparsity=0.99, criterion="random", schedule="oneshot", start=0.25,
        frequency=2, monitor="val_acc", tolerance=0.02, patience=1, backoff_step=0.3,
        verbose=False,
    )  # fmt: skip
    data = tiny_data(noise=2.0)
    trainer([pruning], max_epochs=4, check_val_every_n_epoch=1).fit(classifier(), data)
    kinds = [e["kind"] for e in pruning.summary()["events"]]
    assert kinds[0] == "reference" and "backoff" in kinds
    assert pruning.target_sparsity < 0.99
    # the back-offs that had training steps left were applied: the best pruned weights regrew
    applied = [e["target"] for e in pruning.summary()["events"][:-1] if e["kind"] == "backoff"]
    assert applied and pruning.summary()["sparsity"] == pytest.approx(applied[-1], abs=0.01)


def test_auto_target_rises_in_a_real_fit_while_the_metric_holds():
    """Easy data keeps val_acc at its reference, so "auto" keeps raising the target."""
    pl.seed_everything(0)
    pruning = AdaptivePruning(
        target_sparsity="auto", auto_initial=0.5, max_sparsity=0.95, start=0.1, end=0.3,
        frequency=2, tolerance=0.05, verbose=False,
    )  # fmt: skip
    trainer([pruning], max_epochs=6).fit(classifier(), tiny_data(noise=0.5))
    kinds = [e["kind"] for e in pruning.summary()["events"]]
    assert "raise" in kinds and "backoff" not in kinds
    assert pruning.target_sparsity > 0.5
    assert pruning.summary()["sparsity"] > 0.5


class SparsityAtValidation(pl.Callback):
    def __init__(self, pruning: AdaptivePruning):
        self.pruning, self.values = pruning, []

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.values.append(self.pruning.store.sparsity())


def test_ramp_waits_for_a_dense_reference_and_still_ends_on_time(recwarn):
    """start=0 with a monitor: pruning starts after the first validation (no warning about a
    partly pruned reference) and reaches the target at `end` all the same."""
    pruning = AdaptivePruning(
        target_sparsity=0.8, start=0.0, end=0.75, frequency=2, monitor="val_acc",
        tolerance=1.0, verbose=False,
    )  # fmt: skip
    seen = SparsityAtValidation(pruning)
    trainer([pruning, seen], max_epochs=4).fit(classifier(), tiny_data())
    assert seen.values[0] == 0.0  # the reference validation saw the dense model
    assert not pruning.controller.reference_after_start
    assert not [w for w in recwarn if "partly pruned" in str(w.message)]
    assert pruning.schedule.start_step == 8 and pruning.schedule.end_step == 24
    assert seen.values[2] == pytest.approx(0.8, abs=0.01)  # target at 75 % of training


def test_without_validation_the_ramp_does_not_wait():
    pruning = AdaptivePruning(target_sparsity=0.8, start=0.0, frequency=2, verbose=False)
    with pytest.warns(UserWarning, match="no validation ran"):
        trainer([pruning], max_epochs=2, limit_val_batches=0).fit(classifier(), tiny_data())
    assert pruning.schedule.start_step == 0
    assert pruning.summary()["sparsity"] == pytest.approx(0.8, abs=0.01)


def test_defaults_measure_the_reference_on_the_dense_model(recwarn):
    """Two epochs: the default start (10 %) comes before the first validation, which the ramp
    waits for; the reference is dense and nothing warns."""
    pruning = AdaptivePruning(target_sparsity=0.8, verbose=False)
    seen = SparsityAtValidation(pruning)
    trainer([pruning, seen], max_epochs=2).fit(classifier(), tiny_data())
    assert seen.values[0] == 0.0 and not pruning.controller.reference_after_start
    assert pruning.controller.events[0]["kind"] == "reference"
    assert not [w for w in recwarn if "AdaptivePruning" in str(w.message)]
