"""AdaptivePruning beside Lightning callbacks that average, stop or unfreeze: exact zeros where
Lightning reads the weights, and a warning when the model ends denser than the run meant."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import (
    BackboneFinetuning,
    EarlyStopping,
    EMAWeightAveraging,
    ModelCheckpoint,
)

from lightning_prune.pruning import AdaptivePruning
from tests.pruning_helpers import classifier, tiny_data, trainer


class ValidationProbe(pl.Callback):
    """Counts nonzero pruned weights in the model that each validation batch runs on."""

    def __init__(self, pruning: AdaptivePruning) -> None:
        self.pruning = pruning
        self.nonzero_pruned: list[int] = []

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, *args) -> None:
        if batch_idx == 0 and self.pruning.store is not None:
            params = self.pruning.store.params
            self.nonzero_pruned.append(
                sum(int((params[n].param[~m] != 0).sum()) for n, m in self.pruning.masks.items())
            )


@pytest.mark.parametrize("pruning_first", [True, False])
def test_ema_weight_averaging_validates_and_checkpoints_exact_zeros(tmp_path, pruning_first):
    pl.seed_everything(0)
    pruning = AdaptivePruning(
        target_sparsity=0.8, frequency=2, start=0.0, end=0.5, monitor=None, verbose=False
    )
    ema = EMAWeightAveraging(decay=0.9)
    probe = ValidationProbe(pruning)
    checkpoints = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1)
    ordered = [pruning, ema] if pruning_first else [ema, pruning]
    fit = trainer([*ordered, probe, checkpoints], max_epochs=3, enable_checkpointing=True)
    fit.fit(classifier(), tiny_data())
    assert len(probe.nonzero_pruned) == 4 and not any(probe.nonzero_pruned)  # sanity + 3
    files = sorted(tmp_path.glob("*.ckpt"))
    assert len(files) == 3
    pruned_seen = 0
    for path in files:
        saved = torch.load(path, weights_only=True)
        masks = next(v for k, v in saved["callbacks"].items() if k.startswith("AdaptivePruning"))
        for name, mask in masks["masks"].items():
            pruned_seen += int((~mask).sum())
            assert torch.all(saved["state_dict"][name][~mask] == 0), (path.name, name)
            assert torch.all(saved["current_model_state"][name][~mask] == 0), (path.name, name)
    assert pruned_seen > 0


def test_early_stopping_before_the_target_warns_with_the_sparsity_reached():
    pl.seed_everything(0)
    pruning = AdaptivePruning(target_sparsity=0.9, frequency=2, verbose=False, monitor=None)
    stop = EarlyStopping("val_loss", patience=0, min_delta=10.0)  # stops after 2 epochs
    with pytest.warns(UserWarning, match=r"stopped early .* before it reached target_sparsity"):
        trainer([pruning, stop], max_epochs=30).fit(classifier(), tiny_data())
    assert pruning.summary()["sparsity"] < 0.5


def test_a_run_that_reaches_its_target_gives_no_early_end_warning(recwarn):
    pl.seed_everything(0)
    pruning = AdaptivePruning(target_sparsity=0.5, frequency=2, verbose=False, monitor=None)
    trainer([pruning], max_epochs=2).fit(classifier(), tiny_data())
    assert not [w for w in recwarn if "before it reached" in str(w.message)]


class Backbone(pl.LightningModule):
    """A backbone that BackboneFinetuning freezes at the start and unfreezes at epoch 1."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 64))
        self.head = torch.nn.Linear(64, 10)

    def forward(self, x):
        return self.head(torch.relu(self.backbone(x)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        trainable = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.Adam(trainable, lr=1e-3)


def test_weights_unfrozen_after_being_left_dense_are_named_in_a_warning():
    pl.seed_everything(0)
    pruning = AdaptivePruning(target_sparsity=0.8, frequency=2, verbose=False, monitor=None)
    unfreeze = BackboneFinetuning(unfreeze_backbone_at_epoch=1)
    with pytest.warns(UserWarning, match=r"backbone\.1\.weight.*have been trained since"):
        trainer([pruning, unfreeze], max_epochs=2, limit_val_batches=0).fit(Backbone(), tiny_data())
    assert list(pruning.masks) == ["head.weight"]


class FailsAtStep(pl.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == 5:
            raise RuntimeError("stop here")


def test_a_fit_that_raises_leaves_no_pruning_hook_on_the_model():
    """Activation statistics hook every pruned module's forward; they must go with the fit."""
    pl.seed_everything(0)
    pruning = AdaptivePruning(
        target_sparsity=0.5, criterion="activation", frequency=2, monitor=None, verbose=False
    )
    model = classifier()
    with pytest.raises(RuntimeError, match="stop here"):
        trainer([pruning, FailsAtStep()], max_epochs=2).fit(model, tiny_data())
    assert not [m for m in model.modules() if m._forward_hooks or m._forward_pre_hooks]
