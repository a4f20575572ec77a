"""Masks during training: exact zeros, masked gradients, cleared Adam moments, plain checkpoints."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from lightning_prune.models import build_network
from lightning_prune.pruning import AdaptivePruning, select_params
from lightning_prune.pruning.masks import INERT_SECOND_MOMENT, reset_optimizer_state
from tests.pruning_helpers import ZeroChecker, classifier, tiny_data, trainer


def test_select_params_default_include_exclude_and_output_flag():
    net = build_network("lenet300")
    names = [p.name for p in select_params(net, ("*",), ())]
    assert names == ["1.weight", "3.weight", "5.weight"]
    assert [p.is_output for p in select_params(net, ("*",), ())] == [False, False, True]
    assert [p.name for p in select_params(net, ("*",), ("5",))] == ["1.weight", "3.weight"]
    assert [p.name for p in select_params(net, ("3",), ())] == ["3.weight"]


def test_no_parameter_matched_include_raises_before_training():
    pruning = AdaptivePruning(include=["decoder.*"], monitor=None, verbose=False)
    model = classifier()
    fit_trainer = trainer([pruning], max_epochs=1)
    with pytest.raises(ValueError, match=r"include=\['decoder\.\*'\].*net\.1"):
        fit_trainer.fit(model, tiny_data())
    assert fit_trainer.global_step == 0


def test_weights_exactly_zero_every_step_and_adam_moments_cleared(tmp_path):
    pl.seed_everything(0)
    pruning = AdaptivePruning(
        target_sparsity=0.8, frequency=2, start=0.0, end=0.5, monitor=None, verbose=False
    )
    checker = ZeroChecker(pruning)
    model = classifier()
    fit_trainer = trainer([pruning, checker], max_epochs=2)
    fit_trainer.fit(model, tiny_data())
    assert checker.checked_steps == fit_trainer.global_step == 16
    assert checker.inert_seen
    optimizer = fit_trainer.optimizers[0]
    for name, mask in pruning.masks.items():  # after fit every pruned second moment is inert
        second = optimizer.state[pruning.store.params[name].param]["exp_avg_sq"]
        assert torch.all(second[~mask] > 0.5)
    assert pruning.summary()["sparsity"] == pytest.approx(0.8, abs=1e-3)
    # output layer keeps its density floor; the other layers keep min_density
    layer = pruning.summary()["layer_sparsity"]
    assert layer["net.5.weight"] <= 0.9 + 1e-9
    assert all(s < 1.0 for s in layer.values())

    # a checkpoint of the pruned model loads into the plain, unpruned architecture
    path = tmp_path / "pruned.ckpt"
    fit_trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=True)["state_dict"]
    plain = classifier()
    plain.load_state_dict(state)
    for name, mask in pruning.masks.items():
        assert torch.all(plain.state_dict()[name][~mask] == 0)
        assert int((plain.state_dict()[name] != 0).sum()) <= int(mask.sum())


def test_gradients_are_masked_before_the_optimizer_step():
    pl.seed_everything(0)
    pruning = AdaptivePruning(
        target_sparsity=0.5, frequency=1, end=0.2, monitor=None, verbose=False
    )
    seen = []

    class GradCheck(pl.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            for name, mask in pruning.masks.items():
                grad = pruning.store.params[name].param.grad
                seen.append(bool(torch.all(grad[~mask] == 0)))

    trainer([pruning, GradCheck()], max_epochs=1).fit(classifier(), tiny_data())
    assert seen and all(seen)


def test_summary_logs_and_flops():
    pl.seed_everything(0)
    pruning = AdaptivePruning(target_sparsity=0.9, frequency=4, end=0.5, monitor=None, verbose=True)

    class Recorder(pl.loggers.logger.Logger):
        def __init__(self):
            super().__init__()
            self.keys: set[str] = set()

        name = "rec"
        version = 0

        def log_metrics(self, metrics, step=None):
            self.keys.update(metrics)

        def log_hyperparams(self, *args, **kwargs):
            pass

    recorder = Recorder()
    trainer([pruning], max_epochs=2, logger=recorder).fit(classifier(), tiny_data())
    summary = pruning.summary()
    assert summary["dense_flops"] == 2 * (784 * 300 + 300 * 100 + 100 * 10)
    assert summary["flops"] == pytest.approx(summary["dense_flops"] * 0.1, rel=0.01)
    assert summary["nonzero_params"] < 0.15 * summary["total_params"]
    assert pruning.ramp_progress == 1.0
    for key in ("pruning/sparsity", "pruning/target", "pruning/nonzero", "pruning/flops"):
        assert key in recorder.keys
    assert "pruning/sparsity/net.1.weight" in recorder.keys


def test_conv_network_structured_and_unstructured():
    pl.seed_everything(0)
    for granularity in ("unstructured", "structured"):
        pruning = AdaptivePruning(
            target_sparsity=0.5, granularity=granularity, frequency=2, end=0.5,
            monitor=None, verbose=False,
        )  # fmt: skip
        checker = ZeroChecker(pruning)
        trainer([pruning, checker], max_epochs=1).fit(classifier("lenet5"), tiny_data())
        assert pruning.summary()["sparsity"] == pytest.approx(0.5, abs=0.05)
        if granularity == "structured":
            for name, mask in pruning.masks.items():
                rows = mask.reshape(mask.shape[0], -1)
                assert torch.all(rows.all(dim=1) | ~rows.any(dim=1)), name  # whole rows only
            assert pruning.masks["net.7.weight"].all()  # output layer kept whole


def test_optimizer_state_reset_at_pruned_and_regrown_positions():
    layer = torch.nn.Linear(4, 3)
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.1)
    layer(torch.randn(8, 4)).pow(2).sum().backward()
    optimizer.step()
    params = {p.name: p for p in select_params(layer, ["*"], [])}
    name = next(iter(params))
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[0, :2] = False  # newly pruned
    changed = torch.zeros(3, 4, dtype=torch.bool)
    changed[0, :2] = True
    changed[1, 0] = True  # regrown (kept now)
    reset_optimizer_state([optimizer], params, {name: mask}, {name: changed})
    state = optimizer.state[layer.weight]
    assert torch.all(state["exp_avg"][changed] == 0)
    assert torch.all(state["exp_avg_sq"][~mask] == INERT_SECOND_MOMENT)
    assert state["exp_avg_sq"][1, 0] == 0  # regrown: Adam's own fresh start
    untouched = mask & ~changed
    assert torch.all(state["exp_avg"][untouched] != 0)
    assert torch.all(state["exp_avg_sq"][untouched] > 0)
    # the inert second moment keeps a pruned weight still: its update is exactly zero
    with torch.no_grad():
        layer.weight[~mask] = 0
    optimizer.zero_grad()
    layer(torch.randn(8, 4)).pow(2).sum().backward()
    layer.weight.grad[~mask] = 0
    optimizer.step()
    assert torch.all(layer.weight[~mask] == 0)


class Centralize(pl.Callback):
    """Gradient centralization in `on_after_backward`: writes every weight's gradient, the
    pruned positions included, after backward and before the optimizer step."""

    def on_after_backward(self, trainer, pl_module) -> None:
        for param in pl_module.parameters():
            if param.grad is not None and param.dim() > 1:
                param.grad -= param.grad.mean(dim=1, keepdim=True)


def test_gradients_written_after_backward_are_masked_before_the_step():
    pl.seed_everything(0)
    pruning = AdaptivePruning(
        target_sparsity=0.8, frequency=2, start=0.0, end=0.5, monitor=None, verbose=False
    )
    checker = ZeroChecker(pruning)
    fit_trainer = trainer([pruning, Centralize(), checker], max_epochs=2)
    fit_trainer.fit(classifier(), tiny_data())
    assert checker.checked_steps == fit_trainer.global_step == 16
    assert checker.max_sparsity_seen == pytest.approx(0.8, abs=1e-3)


def test_a_weight_unfrozen_mid_run_has_its_gradients_masked_before_every_step():
    """Pruned while frozen (prune_frozen=True), then trained: its pruned weights stay zero."""
    pl.seed_everything(0)
    pruning = AdaptivePruning(
        target_sparsity=0.7, frequency=2, start=0.0, end=0.5, monitor=None, verbose=False,
        prune_frozen=True,
    )  # fmt: skip
    model = classifier()
    first = model.net[1].weight  # in the optimizer already (Adam skips it while frozen)
    first.requires_grad_(False)
    seen = []

    class Unfreeze(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                first.requires_grad_(True)

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            if first.grad is not None:
                mask = pruning.masks["net.1.weight"]
                seen.append(bool(torch.all(first.grad[~mask] == 0)))

    trainer([pruning, Unfreeze()], max_epochs=2).fit(model, tiny_data())
    assert seen and all(seen)
    assert torch.all(first[~pruning.masks["net.1.weight"]] == 0)
