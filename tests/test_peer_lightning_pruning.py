"""Port of Lightning's own pruning-callback tests to `AdaptivePruning`.

Source: Lightning-AI/pytorch-lightning, tests/tests_pytorch/callbacks/test_pruning.py (the
`ModelPruning` tests). Lightning's `TestModel` (mlp_1, mlp_2 without bias, mlp_3) becomes the
network of our `Classifier` on tiny synthetic 28x28 data; `ModelPruning`'s options map to ours:
`amount` -> `target_sparsity`, `pruning_fn` -> `criterion` + `granularity` (l1 -> "magnitude",
random -> "random", *_structured -> "structured", a custom `BasePruningMethod` -> an
`Importance` instance), `use_global_unstructured` -> `allocation="global"` (else "layerwise"),
`parameters_to_prune` -> `include`/`exclude`, `apply_pruning`/callable `amount` per epoch ->
`schedule`/`start`/`end`, `verbose` -> `verbose=True` (a rich table on stdout),
`make_pruning_permanent` -> always permanent (our masks never live on the model).

Not ported, and why:
- test_pruning_lth_callable, test_lottery_ticket_hypothesis_correctly_reset, and the
  `use_lottery_ticket_hypothesis` axis of test_pruning_callback: AdaptivePruning has no
  lottery-ticket reset (`use_lottery_ticket_hypothesis`, `resample_parameters`).
- test_pruning_callback_ddp (2 CUDA GPUs, standalone) and test_pruning_callback_ddp_spawn
  (2 CUDA GPUs): no GPU here; CPU DDP is covered by tests/test_pruning_ddp.py and CPU ddp_spawn
  by test_ddp_spawn_on_cpu_prunes_the_model_returned_to_the_main_process below.
- The `prune_on_train_epoch_end` axis of test_permanent_when_model_is_saved_multiple_times:
  AdaptivePruning prunes on optimizer steps, never at an epoch hook.
- `parameter_names=["weight", "bias"]` (bias pruning) of test_pruning_callback: only weights are
  pruned; biases stay dense (checked below).
- The misconfigurations "structured needs `use_global_unstructured=False`" and "a custom method
  needs `use_global_unstructured=True`": both combinations are supported here, so they are
  tested as working runs instead of errors; `pruning_dim`/`pruning_norm` have no counterpart.
- The exact "Applied `L1Unstructured` ..." log lines: our report is the fit-end table, whose
  layer names and totals are checked instead.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
import textwrap
from collections import OrderedDict
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn

from lightning_prune.pruning import AdaptivePruning, Importance, ramp_fraction
from tests.pruning_helpers import classifier, tiny_data, trainer

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("net.mlp_1.weight", "net.mlp_2.weight", "net.mlp_3.weight")


def lightning_net() -> nn.Sequential:
    """Lightning's TestModel layers (mlp_2 without bias) on flattened 28x28 inputs."""
    return nn.Sequential(
        OrderedDict(
            [
                ("flat", nn.Flatten()),
                ("mlp_1", nn.Linear(784, 32)),
                ("act_1", nn.ReLU()),
                ("mlp_2", nn.Linear(32, 32, bias=False)),
                ("act_2", nn.ReLU()),
                ("mlp_3", nn.Linear(32, 10)),
            ]
        )
    )


def data(num_train: int = 128):
    return tiny_data(num_train=num_train, batch_size=16)  # 8 steps per epoch by default


def quiet(**kwargs) -> AdaptivePruning:
    """A fast callback: no controller, no table, a mask update every step."""
    options = {"monitor": None, "verbose": False, "frequency": 1, "end": 0.5, **kwargs}
    return AdaptivePruning(**options)


def fit(callbacks, model, max_epochs: int = 1, num_train: int = 128, **kwargs) -> pl.Trainer:
    options = {"limit_val_batches": 0, **kwargs}
    fit_trainer = trainer(callbacks, max_epochs=max_epochs, **options)
    fit_trainer.fit(model, data(num_train))
    return fit_trainer


def pruned(mask: torch.Tensor) -> int:
    return int((~mask).sum())


def assert_exact_zeros(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    for name, mask in masks.items():
        assert torch.all(state[name][~mask.to(state[name].device)] == 0), name


class EveryOther(Importance):
    """Lightning's TestPruningMethod ("prune every other entry"): even flat indices score 0."""

    def __call__(self, param, weight, stats):
        score = torch.ones(weight.numel(), device=weight.device)
        score[::2] = 0.0
        return score.view_as(weight)


PRUNING_FNS = {
    "l1_unstructured": {"criterion": "magnitude"},
    "random_unstructured": {"criterion": "random"},
    "ln_structured": {"criterion": "magnitude", "granularity": "structured"},
    "random_structured": {"criterion": "random", "granularity": "structured"},
    "TestPruningMethod": {},  # criterion=EveryOther(), built per test
}


@pytest.mark.parametrize("parameters_to_prune", [False, True])
@pytest.mark.parametrize("use_global_unstructured", [False, True])
@pytest.mark.parametrize("pruning_fn", list(PRUNING_FNS))
def test_prunes_to_the_target(pruning_fn, use_global_unstructured, parameters_to_prune):
    """Follows test_pruning_callback (via train_with_pruning_callback) in Lightning's tests."""
    pl.seed_everything(1)
    model = classifier(lightning_net())
    assert torch.all(model.net.mlp_2.weight != 0)  # weights are random: none is 0
    options = dict(PRUNING_FNS[pruning_fn])
    if pruning_fn == "TestPruningMethod":
        options["criterion"] = EveryOther()
    if parameters_to_prune:  # Lightning: [(mlp_1, "weight"), (mlp_2, "weight")]
        options["include"] = ["net.mlp_1", "net.mlp_2"]
    allocation = "global" if use_global_unstructured else "layerwise"
    target = 0.3
    pruning = quiet(target_sparsity=target, allocation=allocation, **options)
    dense_head = model.net.mlp_3.weight.detach().clone()

    fit_trainer = fit([pruning], model)
    fit_trainer.test(model, data(), verbose=False)

    expected_layers = LAYERS[:2] if parameters_to_prune else LAYERS
    masks = pruning.masks
    assert sorted(masks) == list(expected_layers)
    assert_exact_zeros(model, masks)
    total = sum(m.numel() for m in masks.values())
    assert pruning.target_sparsity == pytest.approx(target)
    assert pruning.summary()["sparsity"] == pytest.approx(
        sum(pruned(m) for m in masks.values()) / total
    )
    if parameters_to_prune:  # the excluded head was trained but never pruned
        assert torch.all(model.net.mlp_3.weight != 0)
        assert not torch.equal(model.net.mlp_3.weight.detach(), dense_head)
    for bias in (model.net.mlp_1.bias, model.net.mlp_3.bias):  # biases are never pruned
        assert torch.all(bias != 0)

    if options.get("granularity") != "structured":
        if allocation == "global":  # one ranking: exactly `target` of all matched weights
            assert sum(pruned(m) for m in masks.values()) == round(target * total)
        else:  # every layer pruned to the target
            for name, mask in masks.items():
                assert pruned(mask) == round(target * mask.numel()), name
        if pruning_fn == "TestPruningMethod":  # only even flat positions were pruned
            for name, mask in masks.items():
                assert not (~mask).view(-1)[1::2].any(), name
        return

    # structured: whole output neurons (rows) only; the model's output layer stays whole
    rows = {name: mask.reshape(mask.shape[0], -1) for name, mask in masks.items()}
    for name, row in rows.items():
        assert torch.all(row.all(dim=1) | ~row.any(dim=1)), name
    if "net.mlp_3.weight" in masks:
        assert masks["net.mlp_3.weight"].all()
    hidden = [n for n in masks if n != "net.mlp_3.weight"]
    if allocation == "layerwise":  # 30 % of the neurons of every hidden layer
        for name in hidden:
            removed = int((~rows[name].any(dim=1)).sum())
            assert removed == round(target * 32), f"{name}: {removed} of 32 neurons pruned"
    else:  # global: the budget within one row of the largest layer
        row_size = max(masks[n][0].numel() for n in hidden)
        achieved = sum(pruned(m) for m in masks.values()) / total
        assert 0 < achieved <= target
        assert target - achieved <= row_size / total


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target_sparsity": None}, r"target_sparsity must be a number in \[0.0, 1.0\)"),
        ({"target_sparsity": 1.3}, r"target_sparsity must be a number in \[0.0, 1.0\)"),
        ({"criterion": {}}, r"criterion must be one of \[.*'magnitude'.*'random'"),
        ({"criterion": "l1_unstructured"}, "criterion must be one of"),
        ({"granularity": "ln_structured"}, "granularity must be one of"),
        ({"allocation": "global_unstructured"}, "allocation must be one of"),
        ({"granularity": "n:m", "nm": "2"}, "nm must look like 'N:M'"),
        ({"include": 3}, "include must be a list of module-name globs"),
        ({"exclude": ["net.mlp_1", 2]}, "exclude must be a list of module-name globs"),
        ({"schedule": "every_other_epoch"}, "schedule must be one of"),
        ({"verbose": 3}, "verbose"),
    ],
)
def test_invalid_arguments_raise_value_errors_naming_the_option(kwargs, message):
    """Follows test_pruning_misconfiguration in Lightning's test_pruning.py."""
    with pytest.raises(ValueError, match=message):
        AdaptivePruning(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"include": ["chocolate"]}, r"no parameter matched include=\['chocolate'\]"),
        ({"exclude": ["net.*"]}, r"no parameter matched include=\['\*'\] \(exclude=\['net\.\*'\]"),
    ],
)
def test_nothing_matched_raises_naming_include_before_training(kwargs, message):
    """Follows test_pruning_misconfiguration ("chocolate isn't in ('weight', 'bias')")."""
    fit_trainer = trainer([quiet(**kwargs)], max_epochs=1, limit_val_batches=0)
    with pytest.raises(ValueError, match=message):
        fit_trainer.fit(classifier(lightning_net()), data())
    assert fit_trainer.global_step == 0


def test_only_weights_of_prunable_modules_are_selected():
    """Follows test_sanitize_parameters_explicit_check in Lightning's test_pruning.py."""

    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(5, 5))  # a parameter, but no Linear/Conv
            self.bias = nn.Parameter(torch.randn(5))
            self.some_bool = True
            self.some_tensor = torch.randn(3, 3)  # a plain tensor, not a parameter
            self.some_string = "test"
            self.some_none = None

        def forward(self, x):
            return x

    net = lightning_net()
    net.add_module("custom", Custom())
    pl.seed_everything(0)
    pruning = quiet(target_sparsity=0.5)
    model = classifier(net)
    fit([pruning], model)
    assert sorted(pruning.masks) == list(LAYERS)
    parameters = dict(model.named_parameters())
    for name in pruning.masks:
        assert isinstance(parameters[name], nn.Parameter)
    assert torch.all(model.net.custom.weight != 0)
    assert torch.all(model.net.custom.bias != 0)


def test_boolean_attributes_named_like_parameters_are_not_selected():
    """Follows test_original_issue_reproduction (Lightning issue #10835)."""
    net = nn.Sequential(
        OrderedDict(
            [("flat", nn.Flatten()), ("mlp_1", nn.Linear(784, 32)), ("mlp_2", nn.Linear(32, 10))]
        )
    )
    net.mlp_1.training = True
    net.mlp_2.requires_grad = True  # a bool attribute, not the method's effect
    pl.seed_everything(0)
    pruning = quiet(target_sparsity=0.5, allocation="layerwise")
    model = classifier(net)
    fit([pruning], model)
    assert sorted(pruning.masks) == ["net.mlp_1.weight", "net.mlp_2.weight"]
    for name, mask in pruning.masks.items():
        assert pruned(mask) == mask.numel() // 2, name
    assert_exact_zeros(model, pruning.masks)


def total_row(stdout: str) -> list[str]:
    """Cells of the "all pruned layers" row of the verbose table."""
    line = next(line for line in stdout.splitlines() if "all pruned layers" in line)
    return [cell.strip() for cell in re.split(r"[│┃|]", line) if cell.strip()]


@pytest.mark.parametrize("model_type", ["simple", "complex"])
@pytest.mark.parametrize("pruning_amount", [0.1, 0.2, 0.3, 0.5])
def test_reported_sparsity_and_counts(capsys, pruning_amount, model_type):
    """Follows test_sparsity_calculation in Lightning's test_pruning.py."""
    if model_type == "simple":  # one layer: Linear(784, 10)
        net = nn.Sequential(OrderedDict([("flat", nn.Flatten()), ("layer", nn.Linear(784, 10))]))
        include, expected_total = ("*",), 784 * 10
    else:  # two layers, only layer1 pruned
        net = nn.Sequential(
            OrderedDict(
                [
                    ("flat", nn.Flatten()),
                    ("layer1", nn.Linear(784, 64)),
                    ("act", nn.ReLU()),
                    ("layer2", nn.Linear(64, 10)),
                ]
            )
        )
        include, expected_total = ["net.layer1"], 784 * 64
    pl.seed_everything(0)
    pruning = AdaptivePruning(
        target_sparsity=pruning_amount, include=include, schedule="oneshot", monitor=None,
        verbose=True,
    )  # fmt: skip
    model = classifier(net)
    fit([pruning], model, max_steps=2)

    expected_pruned = round(pruning_amount * expected_total)
    assert sum(m.numel() for m in pruning.masks.values()) == expected_total
    assert sum(pruned(m) for m in pruning.masks.values()) == expected_pruned
    summary = pruning.summary()
    assert summary["sparsity"] == pytest.approx(expected_pruned / expected_total)
    total_params = sum(p.numel() for p in model.parameters())
    assert summary["total_params"] == total_params
    assert summary["nonzero_params"] == total_params - expected_pruned
    assert_exact_zeros(model, pruning.masks)

    cells = total_row(capsys.readouterr().out)
    assert cells[1] == f"{expected_total:,}"
    assert cells[2] == f"{expected_total - expected_pruned:,}"
    assert cells[3] == f"{expected_pruned / expected_total:.2%}"
    assert abs(float(cells[3].rstrip("%")) - pruning_amount * 100) <= 0.01


@pytest.mark.parametrize("verbose", [True, False])
def test_verbose_prints_every_pruned_layer(capsys, verbose):
    """Follows test_multiple_pruning_callbacks (verbose=2 per-layer report) in Lightning."""
    pl.seed_everything(0)
    pruning = quiet(target_sparsity=0.5, allocation="layerwise", verbose=verbose)
    fit([pruning], classifier(lightning_net()))
    out = capsys.readouterr().out
    if not verbose:
        assert "AdaptivePruning" not in out and "net.mlp_1.weight" not in out
        return
    assert "AdaptivePruning: per-layer sparsity" in out
    lines = out.splitlines()
    for name in LAYERS:
        line = next(line for line in lines if name in line)
        assert "50.00%" in line, line  # layerwise: each layer at the target
    assert total_row(out)[3] == "50.00%"


@pytest.mark.parametrize("schedule", ["linear", "cubic", "oneshot"])
def test_schedule_over_epochs(schedule):
    """Follows test_multiple_pruning_callbacks (`apply_pruning` per epoch) in Lightning."""
    target, start, end = 0.6, 0.25, 0.75  # 4 epochs of 4 steps: dense epoch 0, ramp 1-2
    pl.seed_everything(0)
    pruning = quiet(target_sparsity=target, schedule=schedule, start=start, end=end)
    seen: list[float] = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            masks = pruning.masks
            seen.append(
                sum(pruned(m) for m in masks.values()) / sum(m.numel() for m in masks.values())
            )

    fit([pruning, Record()], classifier(lightning_net()), max_epochs=4, num_train=64)
    assert len(seen) == 16
    assert seen[:4] == [0.0] * 4  # no pruning before `start` (the whole first epoch)
    assert all(b >= a for a, b in zip(seen, seen[1:], strict=False))  # never less sparse
    assert all(s == pytest.approx(target, abs=1e-4) for s in seen[12:])  # epoch 4 fine-tunes
    assert seen[11] == pytest.approx(target, abs=1e-4)  # reached at `end` (step 12 of 16)
    if schedule == "oneshot":
        assert seen[4] == pytest.approx(target, abs=1e-4)
        return
    ramp = [target * ramp_fraction(schedule, (step - 3) / 8) for step in range(16)]
    for step in range(5, 11):  # mid-ramp, within one step of the schedule
        assert ramp[step - 1] - 1e-3 <= seen[step] <= ramp[step + 1] + 1e-3, (step, seen)
    assert 0 < seen[7] < target


def test_two_pruning_callbacks_on_disjoint_layers():
    """Follows test_multiple_pruning_callbacks (two callbacks in one Trainer) in Lightning."""
    pl.seed_everything(0)
    p1 = quiet(target_sparsity=0.5, include=["net.mlp_1"])
    p2 = quiet(target_sparsity=0.25, include=["net.mlp_3"], criterion="random")
    model = classifier(lightning_net())
    fit([p1, p2], model, max_epochs=2)
    assert list(p1.masks) == ["net.mlp_1.weight"]
    assert list(p2.masks) == ["net.mlp_3.weight"]
    assert pruned(p1.masks["net.mlp_1.weight"]) == 784 * 32 // 2
    assert pruned(p2.masks["net.mlp_3.weight"]) == 32 * 10 // 4
    assert_exact_zeros(model, {**p1.masks, **p2.masks})
    assert torch.all(model.net.mlp_2.weight != 0)


def test_second_pruning_callback_continues_from_a_pruned_model(tmp_path):
    """Follows test_multiple_pruning_callbacks (alternating callbacks, save, load) in Lightning."""
    pl.seed_everything(0)
    model = classifier(lightning_net())
    p1 = quiet(target_sparsity=0.5, allocation="layerwise")
    fit([p1], model)
    first = {n: m.clone() for n, m in p1.masks.items()}
    snapshot = copy.deepcopy(model)  # a copy of the pruned model is an ordinary module
    assert_exact_zeros(snapshot, first)
    assert snapshot.state_dict().keys() == model.state_dict().keys()

    p2 = quiet(target_sparsity=0.75, allocation="layerwise")
    second_trainer = fit([p2], model)
    for name, mask in p2.masks.items():
        assert pruned(mask) == round(0.75 * mask.numel()), name
        assert not (mask & ~first[name]).any(), name  # p1's zeros stay pruned (magnitude 0)
    assert_exact_zeros(model, p2.masks)
    for name, mask in first.items():  # the deep copy did not follow the second run
        kept = snapshot.state_dict()[name][mask]
        assert int((kept != 0).sum()) == int(mask.sum()), name

    path = tmp_path / "foo.ckpt"
    second_trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=True)["state_dict"]
    plain = classifier(lightning_net())
    plain.load_state_dict(state)  # strict: no weight_orig / weight_mask keys
    assert not hasattr(plain.net.mlp_1, "weight_orig")
    assert_exact_zeros(plain, p2.masks)


def callback_state(checkpoint: dict) -> dict:
    keys = [key for key in checkpoint["callbacks"] if "AdaptivePruning" in key]
    assert len(keys) == 1, list(checkpoint["callbacks"])
    return checkpoint["callbacks"][keys[0]]


@pytest.mark.parametrize("save_on_train_epoch_end", [False, True])
def test_every_checkpoint_holds_exact_zeros_and_loads_unpruned(tmp_path, save_on_train_epoch_end):
    """Follows test_permanent_when_model_is_saved_multiple_times in Lightning's tests."""
    pl.seed_everything(0)
    model = classifier(lightning_net())
    pruning = AdaptivePruning(
        target_sparsity=0.5, criterion="random", include=["net.mlp_3"], frequency=1,
        monitor=None, verbose=False,
    )  # fmt: skip
    ckpt = ModelCheckpoint(
        dirpath=tmp_path, monitor="val_acc", mode="max", save_top_k=2, save_last=True,
        save_on_train_epoch_end=save_on_train_epoch_end,
    )  # fmt: skip
    fit_trainer = trainer(
        [pruning, ckpt], max_epochs=3, enable_checkpointing=True, limit_val_batches=1,
        default_root_dir=tmp_path,
    )  # fmt: skip
    fit_trainer.fit(model, data(num_train=64))

    # nothing of the pruning lives on the model: plain parameters, no masks, no hooks
    assert not hasattr(model.net.mlp_3, "weight_orig")
    assert not any("mask" in name for name, _ in model.named_buffers())
    assert not model.net.mlp_3._forward_pre_hooks
    assert pruned(pruning.masks["net.mlp_3.weight"]) == 32 * 10 // 2

    paths = sorted(tmp_path.glob("*.ckpt"))
    assert len(paths) == 3  # top-2 and last
    plain_keys = classifier(lightning_net()).state_dict().keys()
    sparsities = []
    for path in paths:
        checkpoint = torch.load(path, weights_only=True)
        state = checkpoint["state_dict"]
        assert state.keys() == plain_keys, path.name
        masks = callback_state(checkpoint)["masks"]
        assert list(masks) == ["net.mlp_3.weight"]
        mask = masks["net.mlp_3.weight"]
        assert torch.all(state["net.mlp_3.weight"][~mask] == 0), path.name
        sparsities.append(pruned(mask) / mask.numel())
        plain = classifier(lightning_net())
        plain.load_state_dict(state)  # strict load into the unpruned architecture
        assert torch.all(plain.net.mlp_3.weight[~mask] == 0)
    assert max(sparsities) == 0.5
    last = torch.load(ckpt.last_model_path, weights_only=True)
    assert torch.equal(
        callback_state(last)["masks"]["net.mlp_3.weight"], pruning.masks["net.mlp_3.weight"]
    )
    assert torch.equal(last["state_dict"]["net.mlp_3.weight"], model.net.mlp_3.weight.detach())


def test_resume_from_a_pruned_checkpoint(tmp_path):
    """Follows test_permanent_when_model_is_saved_multiple_times (reloading its checkpoint)."""

    class StopAfterFirstEpoch(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            trainer.should_stop = True

    def make() -> AdaptivePruning:
        return AdaptivePruning(
            target_sparsity=0.8, frequency=1, end=0.7, monitor=None, verbose=False
        )

    pl.seed_everything(0)
    first = make()
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    interrupted = trainer(
        [first, StopAfterFirstEpoch(), ckpt], max_epochs=3, enable_checkpointing=True,
        limit_val_batches=0, default_root_dir=tmp_path,
    )  # fmt: skip
    interrupted.fit(classifier(lightning_net()), data(num_train=64))
    assert interrupted.global_step == 4
    saved = torch.load(ckpt.last_model_path, weights_only=True)
    saved_masks = callback_state(saved)["masks"]
    saved_sparsity = sum(pruned(m) for m in saved_masks.values()) / sum(
        m.numel() for m in saved_masks.values()
    )
    assert 0 < saved_sparsity < 0.8

    second = make()
    at_start: dict[str, torch.Tensor] = {}

    class Probe(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            at_start.update({n: m.cpu().clone() for n, m in second.masks.items()})
            assert_exact_zeros(pl_module, second.masks)

    resumed = trainer(
        [second, Probe()], max_epochs=3, limit_val_batches=0, default_root_dir=tmp_path
    )
    model = classifier(lightning_net())
    resumed.fit(model, data(num_train=64), ckpt_path=ckpt.last_model_path)
    assert resumed.global_step == 12
    for name, mask in saved_masks.items():
        assert torch.equal(at_start[name], mask), name  # masks restored, not recomputed
        assert not (second.masks[name] & ~mask).any(), name  # pruned stays pruned
    assert second.summary()["sparsity"] == pytest.approx(0.8, abs=1e-4)
    assert_exact_zeros(model, second.masks)


DDP_SPAWN_SCRIPT = textwrap.dedent(
    """
    import sys
    from collections import OrderedDict

    import pytorch_lightning as pl
    import torch
    from torch import nn

    from lightning_prune.data import SyntheticDataModule
    from lightning_prune.models import Classifier
    from lightning_prune.pruning import AdaptivePruning

    torch.set_num_threads(1)


    class Dump(pl.Callback):
        def __init__(self, pruning, out):
            self.pruning, self.out = pruning, out

        def on_fit_end(self, trainer, pl_module):
            masks = {n: m.cpu() for n, m in self.pruning.masks.items()}
            torch.save(masks, f"{self.out}/masks{trainer.global_rank}.pt")


    if __name__ == "__main__":
        out = sys.argv[1]
        pl.seed_everything(1)
        net = nn.Sequential(OrderedDict([
            ("flat", nn.Flatten()), ("mlp_1", nn.Linear(784, 32)), ("act_1", nn.ReLU()),
            ("mlp_2", nn.Linear(32, 32, bias=False)), ("act_2", nn.ReLU()),
            ("mlp_3", nn.Linear(32, 10)),
        ]))
        model = Classifier(net)
        pruning = AdaptivePruning(
            target_sparsity=0.3, include=["net.mlp_1", "net.mlp_2"], allocation="layerwise",
            frequency=1, end=0.5, monitor=None, verbose=False,
        )
        trainer = pl.Trainer(
            accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=1,
            callbacks=[pruning, Dump(pruning, out)], enable_progress_bar=False,
            enable_model_summary=False, logger=False, enable_checkpointing=False,
            limit_val_batches=0,
        )
        trainer.fit(model, SyntheticDataModule(num_train=128, batch_size=16))
        # ddp_spawn: rank 0's weights and masks come back to this process
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        masks = {n: m.cpu() for n, m in pruning.masks.items()}
        summary = pruning.summary()
        torch.save(
            {"weights": state, "masks": masks, "sparsity": summary["sparsity"]},
            f"{out}/main.pt",
        )
    """
)


def gloo_exit_abort(result: subprocess.CompletedProcess, out: Path) -> bool:
    """True for torch's rare gloo abort at a worker's interpreter exit, after both ranks finished.

    The abort ("terminate called without an active exception") comes after `fit` has returned on
    every rank, in the process group's teardown (the callback runs no collective after training);
    the run is repeated once then, from clean files, and every assertion applies to that run.
    """
    finished = all((out / f"masks{rank}.pt").exists() for rank in (0, 1))
    aborted = "terminate called without an active exception" in result.stderr
    return result.returncode != 0 and finished and aborted


def test_ddp_spawn_on_cpu_prunes_the_model_returned_to_the_main_process(tmp_path):
    """Follows test_pruning_callback_ddp_cpu (ddp_spawn, 2 CPU processes) in Lightning."""
    script = tmp_path / "ddp_spawn_run.py"
    script.write_text(DDP_SPAWN_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for _attempt in range(2):
        for stale in tmp_path.glob("*.pt"):
            stale.unlink()
        result = subprocess.run(
            [sys.executable, str(script), str(tmp_path)],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        if not gloo_exit_abort(result, tmp_path):
            break
    assert result.returncode == 0, result.stderr[-3000:]
    rank0 = torch.load(tmp_path / "masks0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "masks1.pt", weights_only=True)
    assert sorted(rank0) == ["net.mlp_1.weight", "net.mlp_2.weight"]
    main = torch.load(tmp_path / "main.pt", weights_only=True)
    weights = main["weights"]
    assert sorted(main["masks"]) == sorted(rank0)
    expected = sum(pruned(m) for m in rank0.values()) / sum(m.numel() for m in rank0.values())
    assert main["sparsity"] == pytest.approx(expected)
    for name, mask in rank0.items():
        assert torch.equal(mask, rank1[name]), name  # identical masks on both ranks
        assert torch.equal(mask, main["masks"][name]), name  # and in the main process
        assert pruned(mask) == round(0.3 * mask.numel()), name
        assert torch.all(weights[name][~mask] == 0), name  # zeros reached the main process
        assert int((weights[name] == 0).sum()) == pruned(mask), name
    assert torch.all(weights["net.mlp_3.weight"] != 0)
