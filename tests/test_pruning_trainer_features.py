"""AdaptivePruning inside the Trainer features users combine it with: each reaches its target
with exact zeros, or fails before training with an error that says what to do."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import (
    BatchSizeFinder,
    LearningRateFinder,
    ModelCheckpoint,
    StochasticWeightAveraging,
)
from pytorch_lightning.tuner import Tuner
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from lightning_prune.pruning import AdaptivePruning
from tests.pruning_helpers import classifier, tiny_data, trainer


def pruning(target: float = 0.8, **kwargs) -> AdaptivePruning:
    options = dict(target_sparsity=target, frequency=2, monitor=None, verbose=False)
    options.update(kwargs)
    return AdaptivePruning(**options)


def assert_pruned(callback: AdaptivePruning, model: nn.Module, target: float) -> None:
    """The masks reach the target and the model holds exact zeros where they say pruned."""
    assert callback.summary()["sparsity"] == pytest.approx(target, abs=0.01)
    state = model.state_dict()
    for name, mask in callback.masks.items():
        assert torch.all(state[name][~mask.to(state[name].device)] == 0), name


def test_tuner_lr_find_then_fit_keeps_pruning_on():
    pl.seed_everything(0)
    callback, model, data = pruning(), classifier(), tiny_data()
    fit = trainer([callback], max_epochs=2, default_root_dir=None)
    Tuner(fit).lr_find(model, datamodule=data, num_training=8, update_attr=True)
    fit.fit(model, data)
    assert callback.schedule.total_steps == fit.estimated_stepping_batches
    assert_pruned(callback, model, 0.8)


def test_tuner_scale_batch_size_then_fit_places_the_ramp_on_the_new_batch_size():
    callback, model, data = pruning(), classifier(), tiny_data(batch_size=16)
    fit = trainer([callback], max_epochs=2)
    Tuner(fit).scale_batch_size(model, datamodule=data, max_trials=2, steps_per_trial=2)
    assert data.batch_size != 16
    fit.fit(model, data)
    assert callback.schedule.total_steps == fit.estimated_stepping_batches
    assert_pruned(callback, model, 0.8)


@pytest.mark.parametrize("finder_first", [True, False])
def test_finder_callbacks_in_the_same_fit(finder_first, tmp_path):
    callback, model, data = pruning(), classifier(), tiny_data(batch_size=16)
    finders = [
        BatchSizeFinder(max_trials=2, steps_per_trial=2),
        LearningRateFinder(num_training_steps=6),
    ]
    callbacks = [*finders, callback] if finder_first else [callback, *finders]
    fit = trainer(callbacks, max_epochs=2, default_root_dir=tmp_path)
    fit.fit(model, data)
    assert callback.schedule.total_steps == fit.estimated_stepping_batches
    assert callback.ramp_progress == 1.0
    assert_pruned(callback, model, 0.8)


def test_two_callbacks_prune_different_layers_to_different_targets(tmp_path):
    first = pruning(0.5, include=["net.1"])
    second = pruning(0.9, include=["net.3"])
    model = classifier()
    fit = trainer([first, second], max_epochs=2, default_root_dir=tmp_path)
    fit.fit(model, tiny_data())
    assert_pruned(first, model, 0.5)
    assert_pruned(second, model, 0.9)
    assert first.state_key != second.state_key
    fit.save_checkpoint(tmp_path / "two.ckpt")
    saved = torch.load(tmp_path / "two.ckpt", weights_only=True)["callbacks"]
    assert saved[first.state_key]["masks"].keys() == {"net.1.weight"}
    assert saved[second.state_key]["masks"].keys() == {"net.3.weight"}


def test_two_callbacks_on_the_same_weights_fail_before_training():
    fit = trainer([pruning(0.5), pruning(0.9)], max_epochs=1)
    with pytest.raises(ValueError, match="would prune the same weights"):
        fit.fit(classifier(), tiny_data())
    assert fit.global_step == 0


def test_one_callback_reused_for_a_second_fit_on_a_new_model():
    callback = pruning(0.8, monitor="val_acc", tolerance=1.0)
    first, second = classifier(), classifier("lenet5")
    trainer([callback], max_epochs=2).fit(first, tiny_data())
    assert_pruned(callback, first, 0.8)
    trainer([callback], max_epochs=2).fit(second, tiny_data(seed=1))
    assert set(callback.masks) == {n for n, _ in second.named_parameters() if n.endswith("weight")}
    assert [e["kind"] for e in callback.summary()["events"]][0] == "reference"
    assert_pruned(callback, second, 0.8)


class Stream(IterableDataset):
    """Batches of a synthetic stream without __len__."""

    def __iter__(self):
        generator = torch.Generator().manual_seed(0)
        for _ in range(12):
            yield torch.randn(16, 1, 28, 28, generator=generator), torch.randint(0, 10, (16,))


def stream() -> DataLoader:
    return DataLoader(Stream(), batch_size=None)


@pytest.mark.parametrize("max_epochs", [2, -1])
def test_unknown_training_length_fails_before_training(max_epochs):
    fit = trainer([pruning()], max_epochs=max_epochs, limit_val_batches=0)
    with pytest.raises(ValueError, match=r"total_steps=N.*max_steps=N"):
        fit.fit(classifier(), train_dataloaders=stream())
    assert fit.global_step == 0


def test_iterable_dataset_with_total_steps_reaches_the_target():
    callback, model = pruning(total_steps=24), classifier()
    trainer([callback], max_epochs=2, limit_val_batches=0).fit(model, train_dataloaders=stream())
    assert_pruned(callback, model, 0.8)


def test_max_epochs_minus_one_with_max_steps_reaches_the_target():
    callback, model = pruning(), classifier()
    fit = trainer([callback], max_epochs=-1, max_steps=20)
    fit.fit(model, tiny_data())
    assert callback.schedule.total_steps == 20
    assert_pruned(callback, model, 0.8)


class LazyModel(pl.LightningModule):
    """Layers created in `configure_model`, as for sharded or meta-device initialisation."""

    def __init__(self):
        super().__init__()
        self.net = None

    def configure_model(self):
        if self.net is None:
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def test_layers_created_in_configure_model():
    callback, model = pruning(), LazyModel()
    trainer([callback], max_epochs=2).fit(model, tiny_data())
    assert set(callback.masks) == {"net.1.weight", "net.3.weight"}
    assert_pruned(callback, model, 0.8)


class ManualModel(pl.LightningModule):
    """Manual optimization with one optimizer per layer group (`two`) or one for all."""

    def __init__(self, two: bool, every: int = 1):
        super().__init__()
        self.automatic_optimization = False
        self.two, self.every = two, every  # optimizers step every `every` batches
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU())
        self.head = nn.Linear(64, 10)
        self.sparsity_by_batch: list[float] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        loss = F.cross_entropy(self.head(self.body(x)), y) / self.every
        self.manual_backward(loss)
        if (batch_idx + 1) % self.every == 0:
            for optimizer in optimizers:
                optimizer.step()
                optimizer.zero_grad()

    def configure_optimizers(self):
        if not self.two:
            return torch.optim.Adam(self.parameters(), lr=1e-3)
        return [
            torch.optim.Adam(self.body.parameters(), lr=1e-3),
            torch.optim.SGD(self.head.parameters(), lr=1e-2),
        ]


class SparsityLog(pl.Callback):
    def __init__(self, callback: AdaptivePruning):
        self.callback, self.values = callback, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.values.append(self.callback.store.sparsity())


@pytest.mark.parametrize("two", [False, True])
def test_manual_optimization_counts_the_ramp_in_batches(two):
    callback = pruning(0.8, schedule="linear", start=0.0, end=1.0, frequency=1)
    log = SparsityLog(callback)
    model = ManualModel(two)
    fit = trainer([callback, log], max_epochs=2)
    fit.fit(model, tiny_data())
    batches = len(log.values)
    assert callback.schedule.total_steps == batches == 16
    # linear ramp over all batches: about half the target at the middle, the target at the end
    assert log.values[batches // 2 - 1] == pytest.approx(0.4, abs=0.06)
    assert log.values[-1] == pytest.approx(0.8, abs=0.01)
    assert_pruned(callback, model, 0.8)


@pytest.mark.parametrize("every", [2, 4])
def test_manual_accumulation_counts_the_batches_that_step_no_optimizer(every):
    callback = pruning(0.8, schedule="linear", start=0.0, end=1.0, frequency=1)
    log = SparsityLog(callback)
    model = ManualModel(two=False, every=every)
    trainer([callback, log], max_epochs=2).fit(model, tiny_data())
    assert callback.schedule.total_steps == len(log.values) == 16
    assert log.values[7] == pytest.approx(0.4, abs=0.06)
    assert log.values[-1] == pytest.approx(0.8, abs=0.01)
    assert_pruned(callback, model, 0.8)


@pytest.mark.parametrize("regrowth", ["none", "dns", "rigl"])
@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true", "16-true"])
def test_precisions_with_every_regrowth_mode(precision, regrowth):
    # torch's Adam divides by zero in pure float16 (eps underflows), dense models too: use SGD
    optimizer = "sgd" if precision == "16-true" else "adam"
    callback, model = pruning(0.8, regrowth=regrowth), classifier(optimizer=optimizer)
    fit = trainer([callback], max_epochs=1, precision=precision)
    fit.fit(model, tiny_data(num_train=192))
    dtype = next(model.parameters()).dtype
    if callback.shadows is not None:
        assert all(v.dtype == dtype for v in callback.shadows.values.values())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert_pruned(callback, model, 0.8)


@pytest.mark.parametrize("regrowth", ["none", "dns", "rigl"])
def test_gradient_accumulation_and_clipping(regrowth):
    callback, model = pruning(0.8, regrowth=regrowth), classifier()
    fit = trainer(
        [callback], max_epochs=2, accumulate_grad_batches=2, gradient_clip_val=0.5,
        gradient_clip_algorithm="norm",
    )  # fmt: skip
    fit.fit(model, tiny_data())
    assert fit.global_step == callback.schedule.total_steps == 8
    assert_pruned(callback, model, 0.8)


def test_resume_from_a_dense_checkpoint_with_pruning_newly_added(tmp_path):
    pl.seed_everything(0)
    data = tiny_data()
    dense = trainer([], max_epochs=2, default_root_dir=tmp_path)
    dense.fit(classifier(), data)
    dense.save_checkpoint(tmp_path / "dense.ckpt")
    callback, model = pruning(0.9), classifier()
    fit = trainer([callback], max_epochs=5)
    fit.fit(model, data, ckpt_path=tmp_path / "dense.ckpt")
    assert callback.schedule.total_steps == fit.global_step - dense.global_step == 24
    assert_pruned(callback, model, 0.9)


def test_resume_with_few_steps_left_says_why_the_ramp_is_abrupt(tmp_path):
    data = tiny_data()
    dense = trainer([], max_epochs=2, default_root_dir=tmp_path)
    dense.fit(classifier(), data)
    dense.save_checkpoint(tmp_path / "dense.ckpt")
    callback, model = pruning(0.9, frequency=10), classifier()
    with pytest.warns(UserWarning, match="only 8 optimizer steps remain"):
        trainer([callback], max_epochs=3).fit(model, data, ckpt_path=tmp_path / "dense.ckpt")
    assert_pruned(callback, model, 0.9)


class Plain(pl.LightningModule):
    """No `self.log` in training_step: torch 2.13 cannot compile Lightning's log call."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def test_torch_compiled_lightning_module():
    callback, model = pruning(0.8), Plain()
    trainer([callback], max_epochs=2).fit(torch.compile(model, backend="eager"), tiny_data())
    assert_pruned(callback, model, 0.8)


def test_torch_compiled_network_inside_the_module():
    callback, model = pruning(0.8), classifier()
    model.net = torch.compile(model.net, backend="eager")
    trainer([callback], max_epochs=2).fit(model, tiny_data())
    assert "net._orig_mod.5.weight" in callback.masks
    assert_pruned(callback, model, 0.8)
    assert callback.summary()["flops"] < callback.summary()["dense_flops"]


def test_stochastic_weight_averaging_keeps_exact_zeros():
    callback, model = pruning(0.8, end=0.9), classifier()
    swa = StochasticWeightAveraging(swa_lrs=1e-3, swa_epoch_start=1)
    trainer([callback, swa], max_epochs=3).fit(model, tiny_data())
    assert_pruned(callback, model, 0.8)


def test_every_step_checkpoint_holds_exact_zeros_at_its_masks(tmp_path):
    callback, model = pruning(0.8), classifier()
    checkpoints = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=3, save_top_k=-1)
    fit = trainer([callback, checkpoints], max_epochs=2, enable_checkpointing=True)
    fit.fit(model, tiny_data())
    files = sorted(tmp_path.glob("*.ckpt"))
    assert len(files) == 5
    pruned_seen = 0.0
    for path in files:
        saved = torch.load(path, weights_only=True)
        masks = saved["callbacks"][callback.state_key]["masks"]
        for name, mask in masks.items():
            assert torch.all(saved["state_dict"][name][~mask] == 0), (path.name, name)
            pruned_seen = max(pruned_seen, 1 - mask.float().mean().item())
    assert pruned_seen > 0.5


def test_pruning_metrics_reach_model_checkpoint_and_early_stopping(tmp_path):
    """`pruning/sparsity` goes through `pl_module.log`: Lightning's own callbacks monitor it."""
    from pytorch_lightning.callbacks import EarlyStopping

    callback, model = pruning(0.8, monitor="val_acc", tolerance=1.0), classifier()
    best = ModelCheckpoint(dirpath=tmp_path, monitor="pruning/sparsity", mode="max")
    # stops once the target is reached: sparsity no longer rises by 1e-3 for 1 validation
    stop = EarlyStopping(monitor="pruning/sparsity", mode="max", min_delta=1e-3, patience=1)
    fit = trainer([callback, best, stop], max_epochs=8, enable_checkpointing=True)
    fit.fit(model, tiny_data())
    assert fit.callback_metrics["pruning/sparsity"] == pytest.approx(0.8, abs=0.01)
    assert best.best_model_score == pytest.approx(0.8, abs=0.01)
    assert stop.stopped_epoch > 0 and fit.current_epoch < 8
    assert "pruning/event" in fit.callback_metrics


class NoisySGD(torch.optim.SGD):
    """Moves every weight, gradient or not: pruned weights must be re-zeroed after each step."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = super().step(closure)
        for group in self.param_groups:
            for p in group["params"]:
                p.add_(torch.randn_like(p), alpha=1e-3)
        return loss


class NoisyModel(Plain):
    def configure_optimizers(self):
        return NoisySGD(self.parameters(), lr=0.01)


class ZerosEveryStep(pl.Callback):
    def __init__(self, callback: AdaptivePruning):
        self.callback, self.checked = callback, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        for name, mask in self.callback.masks.items():
            assert torch.all(pl_module.get_parameter(name)[~mask] == 0), name
        self.checked += 1


@pytest.mark.parametrize("model_class", [Plain, NoisyModel])
def test_exact_zeros_after_every_step_whatever_the_optimizer(model_class):
    callback, model = pruning(0.8), model_class()
    checker = ZerosEveryStep(callback)
    trainer([callback, checker], max_epochs=2).fit(model, tiny_data())
    assert checker.checked == 16
    assert callback._rezero_each_step == (model_class is NoisyModel)
    assert_pruned(callback, model, 0.8)
