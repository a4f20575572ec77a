"""State and resume: an interrupted-and-resumed run ends exactly like an uninterrupted one."""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from lightning_prune.pruning import AdaptivePruning
from tests.pruning_helpers import classifier, tiny_data, trainer


class StopAfter(pl.Callback):
    """Simulates an interruption: stop at the end of epoch `epochs` (of a longer run)."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


def make_pruning() -> AdaptivePruning:
    return AdaptivePruning(
        target_sparsity=0.9, frequency=3, start=0.1, end=0.8, regrowth="dns",
        regrow_fraction=0.2, criterion="taylor", monitor="val_acc", verbose=False,
    )  # fmt: skip


def run(tmp_path, stop_after: int | None, ckpt_path=None):
    pl.seed_everything(0)
    pruning = make_pruning()
    callbacks = [pruning] + ([StopAfter(stop_after)] if stop_after else [])
    fit = trainer(callbacks, max_epochs=4, default_root_dir=tmp_path)
    model = classifier()
    fit.fit(model, tiny_data(), ckpt_path=ckpt_path)
    return fit, model, pruning


def test_resume_gives_identical_masks_weights_and_schedule(tmp_path):
    _, full_model, full = run(tmp_path / "full", None)

    interrupted, _, first = run(tmp_path / "a", stop_after=2)
    assert interrupted.current_epoch == 2 and 0 < first.store.sparsity() < 0.9
    ckpt = tmp_path / "interrupted.ckpt"
    interrupted.save_checkpoint(ckpt)
    state = torch.load(ckpt, weights_only=True)  # plain tensors and types only
    assert any("AdaptivePruning" in key for key in state["callbacks"])

    resumed, resumed_model, second = run(tmp_path / "b", None, ckpt_path=ckpt)
    assert resumed.global_step == 32
    for name, mask in full.masks.items():
        assert torch.equal(mask, second.masks[name]), name
    for key, value in full_model.state_dict().items():
        assert torch.equal(value, resumed_model.state_dict()[key]), key
    assert full.schedule.state_dict() == second.schedule.state_dict()
    assert full.summary()["events"] == second.summary()["events"]
    assert full.summary()["sparsity"] == second.summary()["sparsity"]
