"""Physically remove dead output neurons / channels, so structured pruning really shrinks.

A unit is *dead* when its weight row (Linear) or filter (Conv) is exactly zero. It is not
necessarily silent: it still emits a constant (its bias, or BatchNorm's shift of it) that
travels through ReLU / pooling / flatten to the next layer. Instead of requiring zero biases,
we measure that constant where it arrives (the next layer's input, one forward pass) and
fold it into the next layer's bias, then remove the unit. This is exact whenever the
constant reaches each consumer unchanged at every position; a dead unit whose nonzero
constant would meet zero padding (a padded or grouped conv consumer) is kept; zero its
bias (and BatchNorm shift) when pruning it, so the constant after ReLU is 0 and it can go.
A grouped conv (``groups > 1`` but not depthwise, i.e. not ``groups == in == out channels``)
keeps all its input and output channels, and so do the layers tied to them: removing units
unevenly across its groups would leave channel counts its ``groups`` cannot divide, and
removing whole groups would need every channel of a group dead, which pruning rarely leaves.
Depthwise convs shrink with the layer that feeds them.
Coupled layers (BatchNorm, next layer's inputs, residual adds, concat) come from
Torch-Pruning's DependencyGraph. Units that feed the model output directly are never removed.
The copy is for inference: constants are measured in eval mode (BatchNorm running stats).
Attention heads whose weights are all zero (granularity "heads") go too: see `export.heads`.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from lightning_prune.export.heads import replace_attention_heads, shrink_linear_heads
from lightning_prune.extras import missing, require
from lightning_prune.pruning.attention import check_attention_heads

if not missing(("torch_pruning",)):  # the `export` extra; `compact` says so when absent
    import torch_pruning as tp

_PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_PASS_THROUGH = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CONST_RTOL = 1e-5
_CONST_ATOL = 1e-6


def _dead_units(module: nn.Module) -> list[int]:
    """Output units of a Linear/Conv whose weights are all exactly zero."""
    weight = module.weight.detach().reshape(module.weight.shape[0], -1)
    return torch.nonzero(~weight.ne(0).any(dim=1)).flatten().tolist()


def _is_grouped_conv(module: nn.Module) -> bool:
    """A conv whose channels split into groups (not plain, not depthwise): kept whole."""
    if not isinstance(module, nn.modules.conv._ConvNd) or module.groups == 1:
        return False
    return not module.groups == module.in_channels == module.out_channels


def _is_producer(dg: tp.DependencyGraph, dep: Any) -> bool:
    return isinstance(dep.target.module, _PRUNABLE) and dg.is_out_channel_pruning_fn(dep.handler)


def _is_consumer(dg: tp.DependencyGraph, dep: Any) -> bool:
    return isinstance(dep.target.module, _PRUNABLE) and dg.is_in_channel_pruning_fn(dep.handler)


def _unsupported(dep: Any) -> bool:
    """A parametric module other than Linear/Conv/BatchNorm would change if a unit went."""
    module = dep.target.module
    if not isinstance(module, nn.Module) or isinstance(module, _PRUNABLE + _PASS_THROUGH):
        return False
    return any(True for _ in module.parameters(recurse=False))


def _capture_inputs(
    model: nn.Module, modules: list[nn.Module], example_input: Any
) -> dict[nn.Module, list[torch.Tensor]]:
    """Record the input of each module in ``modules`` during one forward pass."""
    captured: dict[nn.Module, list[torch.Tensor]] = defaultdict(list)
    handles = [
        m.register_forward_pre_hook(lambda mod, args: captured[mod].append(args[0].detach()))
        for m in modules
    ]
    try:
        with torch.no_grad():
            _forward(model, example_input)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def _forward(model: nn.Module, example_input: Any) -> Any:
    if isinstance(example_input, (tuple, list)):
        return model(*example_input)
    if isinstance(example_input, dict):
        return model(**example_input)
    return model(example_input)


def _constants(module: nn.Module, x: torch.Tensor, idxs: list[int]) -> list[float | None]:
    """Per index, the value ``x`` holds at every position of that feature/channel, or None."""
    if isinstance(module, nn.Linear):
        values = x[..., idxs].reshape(-1, len(idxs)).T
    else:
        values = x[:, idxs].transpose(0, 1).reshape(len(idxs), -1)
    first = values[:, :1].expand_as(values)
    close = torch.isclose(values, first, rtol=_CONST_RTOL, atol=_CONST_ATOL).all(dim=1)
    return [v if ok else None for v, ok in zip(values[:, 0].tolist(), close.tolist(), strict=True)]


def _foldable(module: nn.Module) -> bool:
    """Whether a constant input channel adds a plain bias (no padding, no groups)."""
    if isinstance(module, nn.Linear):
        return True
    padded = isinstance(module.padding, str) or any(p != 0 for p in module.padding)
    return module.groups == 1 and not padded


def _bias_delta(module: nn.Module, idxs: list[int], const: list[float]) -> torch.Tensor:
    """What constant inputs ``const`` at input indices ``idxs`` add to ``module``'s output."""
    weight = module.weight.detach().double()[:, idxs]
    if not isinstance(module, nn.Linear):
        weight = weight.sum(dim=tuple(range(2, weight.dim())))
    return weight @ torch.tensor(const, dtype=torch.float64)


def _add_bias(module: nn.Module, delta: torch.Tensor) -> None:
    with torch.no_grad():
        if module.bias is None:
            weight = module.weight
            module.bias = nn.Parameter(weight.new_zeros(weight.shape[0]))
        module.bias.add_(delta.to(module.bias))


def _plan_group(
    dg: tp.DependencyGraph, model: nn.Module, group: Any, example_input: Any
) -> tuple[list[int], dict[nn.Module, torch.Tensor]]:
    """Root indices that can go and the bias corrections their removal needs."""
    if any(_unsupported(it.dep) or _is_grouped_conv(it.dep.target.module) for it in group):
        return [], {}
    removable = set(group[0].root_idxs)
    consumers: dict[nn.Module, list[tuple[int, int]]] = defaultdict(list)  # (idx, root idx)
    for item in group:
        pairs = list(zip(item.idxs, item.root_idxs, strict=True))
        if _is_producer(dg, item.dep):
            dead = set(_dead_units(item.dep.target.module))
            removable &= {root for idx, root in pairs if idx in dead}
        elif _is_consumer(dg, item.dep):
            consumers[item.dep.target.module].extend(pairs)
    if not consumers:  # the units reach the model output directly: keep them
        return [], {}
    captured = _capture_inputs(model, list(consumers), example_input)
    folds: dict[nn.Module, list[tuple[int, int, float]]] = defaultdict(list)
    for module, pairs in consumers.items():
        if len(captured[module]) != 1:  # unused or shared module: leave the group alone
            return [], {}
        consts = _constants(module, captured[module][0], [idx for idx, _ in pairs])
        for (idx, root), value in zip(pairs, consts, strict=True):
            if value is None or (value != 0 and not _foldable(module)):
                removable.discard(root)
            elif value != 0:
                folds[module].append((root, idx, value))
    root_units = group[0].dep.target.module.weight.shape[0]
    if len(removable) >= root_units:
        removable.discard(min(removable))  # a layer keeps at least one unit
    deltas = {}
    for module, uses in folds.items():
        kept = [(idx, value) for root, idx, value in uses if root in removable]
        if kept:
            deltas[module] = _bias_delta(module, [i for i, _ in kept], [v for _, v in kept])
    return sorted(removable), deltas


def _final_output_layers(model: nn.Module, example_input: Any) -> set[nn.Module]:
    """The last Linear/Conv run in the forward pass (the logits): never shrunk."""
    order: list[nn.Module] = []
    handles = [
        m.register_forward_hook(lambda mod, args, out: order.append(mod))
        for m in model.modules()
        if isinstance(m, _PRUNABLE)
    ]
    try:
        with torch.no_grad():
            _forward(model, example_input)
    finally:
        for handle in handles:
            handle.remove()
    return set(order[-1:])


def compact(
    model: nn.Module,
    example_input: Any,
    *,
    keep: list[nn.Module] | None = None,
    attention_heads: Mapping[str, Any] | None = None,
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> nn.Module:
    """Return a new, physically smaller copy of ``model`` without its dead units and heads.

    ``example_input`` is a tensor (or tuple/dict of inputs) for tracing. ``keep`` lists
    modules of ``model`` whose output units (or heads) must stay (the last Linear/Conv always
    stays). Dead heads of every nn.MultiheadAttention go (it becomes a
    ``CompactMultiheadAttention``); ``attention_heads`` (as given to AdaptivePruning, globs
    relative to ``model``) names attention built from separate Linears whose dead heads go too.
    The copy is in eval mode; its outputs on ``example_input`` are checked against the
    original's with ``rtol``/``atol`` and a RuntimeError is raised if they differ.
    """
    require("structural compaction (torch-pruning)")
    attention_heads = check_attention_heads(attention_heads)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            reference = _forward(model, example_input)
        new = copy.deepcopy(model).eval()
    finally:
        model.train(was_training)
    index = {m: i for i, m in enumerate(model.modules())}
    new_modules = list(new.modules())
    ignored = {new_modules[index[m]] for m in keep or []}
    ignored |= _final_output_layers(new, example_input)
    shrink_linear_heads(new, attention_heads, ignored)  # before the graph sees dead q/k/v rows
    with torch.enable_grad():
        dg = tp.DependencyGraph().build_dependency(new, example_input, verbose=False)
    for module in [m for m in new.modules() if isinstance(m, _PRUNABLE)]:
        if module in ignored or module not in dg.module2node:
            continue
        dead = _dead_units(module)
        if not dead:
            continue
        out_fn = dg.get_pruner_of_module(module).prune_out_channels
        group = dg.get_pruning_group(module, out_fn, dead)
        if any(_is_producer(dg, it.dep) and it.dep.target.module in ignored for it in group):
            continue
        removable, deltas = _plan_group(dg, new, group, example_input)
        if not removable:
            continue
        for consumer, delta in deltas.items():
            _add_bias(consumer, delta)
        dg.get_pruning_group(module, out_fn, removable).prune(record_history=False)
    replace_attention_heads(new, ignored)  # after the graph, which knows nn.MultiheadAttention
    _check_same_outputs(new, example_input, reference, rtol, atol)
    return new


def _check_same_outputs(
    model: nn.Module, example_input: Any, reference: Any, rtol: float, atol: float
) -> None:
    with torch.no_grad():
        output = _forward(model, example_input)
    ref_flat = torch.utils._pytree.tree_leaves(reference)
    out_flat = torch.utils._pytree.tree_leaves(output)
    same = len(ref_flat) == len(out_flat) and all(
        a.shape == b.shape and torch.allclose(a, b, rtol=rtol, atol=atol)
        for a, b in zip(ref_flat, out_flat, strict=False)
    )
    if not same:
        raise RuntimeError("compact: the compacted model's outputs differ from the original's")
