"""Resume from a step checkpoint taken mid-epoch (ModelCheckpoint(every_n_train_steps=...)):
the resumed run sees the rest of that epoch's batches and ends exactly like the uninterrupted
run, masks, weights, schedule and controller decisions alike."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from lightning_prune.data import FashionMNISTDataModule
from lightning_prune.pruning import AdaptivePruning
from lightning_prune.pruning.schedules import SparsitySchedule
from tests.conftest import fashion_mnist_available
from tests.pruning_helpers import classifier, tiny_data, trainer

EPOCHS = 3  # 8 batches of 32 per epoch: 24 optimizer steps
TAYLOR_DNS = dict(
    criterion="taylor", regrowth="dns", regrow_fraction=0.2, target_sparsity=0.97,
    tolerance=0.0, patience=2, frequency=3, start=0.4,
)  # fmt: skip


def fashion_mnist():
    return FashionMNISTDataModule(batch_size=32, subset=256, val_subset=64, test_subset=64)


# name: (AdaptivePruning options, Trainer options, data module)
CONFIGS = {
    # the defaults (hybrid |w| + running |w*g|, controller on val_acc); validation only after
    # epoch 2, so the ramp's wait for a dense reference runs out first (at step 15)
    "default": (dict(start=0.05, frequency=4), dict(check_val_every_n_epoch=2), tiny_data),
    "default-fashion-mnist": (dict(start=0.05, frequency=4), {}, fashion_mnist),
    # random scores (their generator state), no controller: swaps with dense-gradient growth
    "random-rigl": (
        dict(criterion="random", regrowth="rigl", monitor=None, frequency=4),
        {},
        tiny_data,
    ),
    # the default criterion without a controller: statistics only in the window before updates
    "hybrid-window": (dict(monitor=None, frequency=5, start=0.1), {}, tiny_data),
    # Taylor statistics and DNS shadows; validation every 4 steps on noisy data, so the
    # controller pauses and backs off (tolerance 0)
    "taylor-dns-controller": (TAYLOR_DNS, dict(val_check_interval=4), lambda: tiny_data(noise=3)),
}


def fit(config: str, root, ckpt_path=None, every_n_steps: int | None = None):
    """One fit of `EPOCHS` epochs; with `every_n_steps` it also saves a checkpoint that often."""
    options, trainer_options, data = CONFIGS[config]
    pl.seed_everything(0)
    pruning = AdaptivePruning(**{"target_sparsity": 0.9, "end": 0.8, "verbose": False, **options})
    callbacks: list[pl.Callback] = [pruning]
    if every_n_steps:
        callbacks.append(
            ModelCheckpoint(
                dirpath=root,
                filename="{step}",
                every_n_train_steps=every_n_steps,
                save_top_k=-1,
                save_on_train_epoch_end=False,
            )  # fmt: skip
        )
    checkpointing = bool(every_n_steps)
    run = trainer(callbacks, EPOCHS, enable_checkpointing=checkpointing, **trainer_options)
    model = classifier()
    run.fit(model, data(), ckpt_path=ckpt_path)
    return run, model, pruning


def assert_same_end(full, full_model, resumed, resumed_model) -> None:
    assert set(full.masks) == set(resumed.masks)
    for name, mask in full.masks.items():
        assert torch.equal(mask, resumed.masks[name]), f"mask {name}"
    resumed_state = resumed_model.state_dict()
    for key, value in full_model.state_dict().items():
        assert torch.equal(value, resumed_state[key]), f"weight {key}"
    assert full.schedule.state_dict() == resumed.schedule.state_dict()
    assert full.summary()["events"] == resumed.summary()["events"]


@pytest.mark.parametrize(
    "config", ["default", "default-fashion-mnist", "random-rigl", "taylor-dns-controller"]
)
def test_resume_from_mid_epoch_step_checkpoints(tmp_path, config):
    """Checkpoints every 5 steps (steps 5, 10, 15, 20: none at an epoch end); resume from
    two of them: step 5, before pruning starts, and step 15, in the middle of the ramp."""
    if config.endswith("fashion-mnist") and not fashion_mnist_available():
        pytest.skip("Fashion-MNIST not installed (make data)")
    full_run, full_model, full = fit(config, tmp_path / "full", every_n_steps=5)
    assert full_run.global_step == 8 * EPOCHS and full.store.sparsity() > 0.5
    for step in (5, 15):
        ckpt = tmp_path / "full" / f"step={step}.ckpt"
        assert torch.load(ckpt, weights_only=True)["global_step"] == step
        resumed_run, model, resumed = fit(config, tmp_path / str(step), ckpt_path=ckpt)
        assert resumed_run.global_step == full_run.global_step
        assert_same_end(full, full_model, resumed, model)


def test_resume_inside_a_statistics_window(tmp_path):
    """With frequency 5 the gradient statistics are gathered in the 2 steps before each update
    (11 and 12 for the update at 12): the checkpoint at step 12 holds statistics of step 11
    that the update at step 12 still needs."""
    config = "hybrid-window"
    full_run, full_model, full = fit(config, tmp_path / "full", every_n_steps=6)
    ckpt = tmp_path / "full" / "step=12.ckpt"
    (state,) = [
        v for k, v in torch.load(ckpt, weights_only=True)["callbacks"].items()
        if k.startswith("AdaptivePruning")
    ]  # fmt: skip
    clock, schedule = state["clock"], SparsitySchedule("cubic", 0.1, 0.8)
    schedule.load_state_dict(state["schedule"])
    assert full.stats_window == 2 and state["stats"]["taylor"]
    assert schedule.before_update(clock - 1, 5, full.stats_window, after_ramp=False)
    assert schedule.update_due(clock, 5, state["applied_goal"], swapping=False)
    resumed_run, model, resumed = fit(config, tmp_path / "resumed", ckpt_path=ckpt)
    assert_same_end(full, full_model, resumed, model)


@pytest.mark.parametrize("module", ["synthetic", "fashion_mnist"])
def test_train_loader_resumes_where_its_state_was_saved(module):
    """The data modules' training loader: its state after 3 batches of epoch 1, loaded into a
    fresh loader, gives the remaining batches of that epoch and then epoch 2 as usual."""
    if module == "fashion_mnist" and not fashion_mnist_available():
        pytest.skip("Fashion-MNIST not installed (make data)")
    make = (
        (lambda: tiny_data(batch_size=40))
        if module == "synthetic"
        else lambda: FashionMNISTDataModule(batch_size=40, subset=200, val_subset=40)
    )
    first, second = make(), make()
    first.setup("fit")
    second.setup("fit")
    loader = first.train_dataloader()
    loader.sampler.set_epoch(1)
    epoch = [y.tolist() for _, y in loader]
    batches = iter(loader)
    head = [next(batches)[1].tolist() for _ in range(3)]
    state = loader.state_dict()
    assert head == epoch[:3] and state == {"epoch": 1, "position": 3}
    resumed = second.train_dataloader()
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(1)  # as Lightning does before each epoch
    assert [y.tolist() for _, y in resumed] == epoch[3:]
    resumed.sampler.set_epoch(2)
    loader.sampler.set_epoch(2)
    assert [y.tolist() for _, y in resumed] == [y.tolist() for _, y in loader]
