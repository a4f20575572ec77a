"""What one training forward reveals: which prunable layer produces the output, and MACs.

Registration order says nothing about data flow (a head declared before the body, an output
layer shared with the input embedding), so the output layers are the one whose module ran last
in a real forward and every one whose output the model's forward returned as is (a model with
several heads), and multiply-accumulates are counted from the shapes that really flowed.

A call of a Linear, Conv or ConvTranspose is counted by `torch.utils.flop_counter.
FlopCounterMode` (MACs = its FLOPs / 2; bias adds are not counted). MultiheadAttention and RNNs
keep a shape formula: FlopCounterMode counts a module, not each of its weights (in_proj vs
out_proj, weight_ih vs weight_hh), counts attention scores on some kernels only (bmm yes, CPU
SDPA no), and sees nothing in fused RNN kernels (LSTM on oneDNN, every RNN on cuDNN).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lightning_prune.pruning.selection import CONV_TYPES, TRANSPOSED_TYPES, PrunableParam

COUNTED_TYPES = (nn.Linear, *CONV_TYPES, *TRANSPOSED_TYPES)  # one weight each: FlopCounterMode


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, list | tuple):
        for item in value:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def _tensors(value: Any) -> list[torch.Tensor]:
    """Every tensor in a (nested) tuple, list or dict, as returned by a forward."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list | tuple):
        return [t for item in value for t in _tensors(item)]
    return []


def _attention_inputs(args: tuple, kwargs: dict) -> list[torch.Tensor]:
    names = ("query", "key", "value")
    values = [*args[:3], *(kwargs[n] for n in names[len(args[:3]) :] if n in kwargs)]
    return [v for v in values if isinstance(v, torch.Tensor)]


def weight_macs(param: PrunableParam, owner: nn.Module, args, kwargs, output) -> int:
    """Multiply-accumulates of `param` in one call of an attention or RNN `owner` (the whole
    batch); 0 for an Embedding (a lookup) and any other module."""
    weight, module = param.param, param.module
    if isinstance(owner, nn.MultiheadAttention):
        inputs = _attention_inputs(args, kwargs)
        if module is not owner:  # out_proj: one output row per query position
            out = _first_tensor(output)
            return 0 if out is None else out.numel() * weight.shape[1]
        if param.name.endswith("in_proj_weight"):
            rows = weight.shape[0] // 3
            return sum(x.numel() // x.shape[-1] * rows * x.shape[-1] for x in inputs)
        index = ("q_proj_weight", "k_proj_weight", "v_proj_weight").index(param.name.split(".")[-1])
        x = inputs[index] if index < len(inputs) else None
        return 0 if x is None else x.numel() // x.shape[-1] * weight.numel()
    if isinstance(owner, nn.RNNBase):
        x = _first_tensor(args)
        if x is None or isinstance(args[0], nn.utils.rnn.PackedSequence):
            return 0
        return x.numel() // x.shape[-1] * weight.numel()
    return 0


class ForwardTrace:
    """Forward hooks on the modules that own prunable weights, kept for one training forward."""

    def __init__(self, params: Sequence[PrunableParam], root: nn.Module | None = None) -> None:
        """`root`: the model whose forward's return value names more output layers."""
        self.params = list(params)
        self.last_run: dict[int, int] = {}
        self.returned: set[int] = set()  # owners whose output the root's forward returned
        self._outputs: dict[int, torch.Tensor] = {}  # owner id -> its output (one forward)
        self.macs: dict[str, int] = {}  # summed over every traced call
        self.samples = 0  # examples that went through the traced forwards (set by the caller)
        self._calls = 0
        self._counting: dict[int, FlopCounterMode] = {}  # owner id -> its call's counter
        owners = {id(o): o for p in self.params for o in p.owners}
        self._handles = [
            owner.register_forward_pre_hook(self._count)
            for owner in owners.values()
            if isinstance(owner, COUNTED_TYPES)
        ]
        self._handles += [  # always_call: a forward that raises still closes its counter
            owner.register_forward_hook(self._hook, with_kwargs=True, always_call=True)
            for owner in owners.values()
        ]
        if root is not None:
            self._handles.append(root.register_forward_hook(self._root_returned))

    def _root_returned(self, root: nn.Module, args, output) -> None:
        returned = _tensors(output)
        self.returned |= {
            owner for owner, out in self._outputs.items() if any(out is t for t in returned)
        }
        self._outputs = {}

    def _count(self, owner: nn.Module, args) -> None:
        counter = FlopCounterMode(display=False)
        counter.__enter__()
        self._counting[id(owner)] = counter

    def _hook(self, owner: nn.Module, args, kwargs, output) -> None:
        counter = self._counting.pop(id(owner), None)
        if counter is not None:
            counter.__exit__(None, None, None)
        self._calls += 1
        self.last_run[id(owner)] = self._calls
        out = _first_tensor(output)
        if out is not None:
            self._outputs[id(owner)] = out
        for p in self.params:
            if any(o is owner for o in p.owners):
                if counter is not None:
                    macs = counter.get_total_flops() // 2
                else:
                    try:
                        macs = weight_macs(p, owner, args, kwargs, output)
                    except (IndexError, ValueError, RuntimeError):  # unusual call signature
                        macs = 0
                self.macs[p.name] = self.macs.get(p.name, 0) + macs

    def macs_per_example(self) -> dict[str, int]:
        return {n: m // max(1, self.samples) for n, m in self.macs.items()}

    def output_weights(self) -> set[int]:
        """ids of the weights used by the module that ran last or whose output the model
        returned (empty if nothing ran)."""
        if not self.last_run:
            return set()
        last = max(self.last_run.values())
        outputs = {owner for owner, call in self.last_run.items() if call == last}
        outputs |= self.returned
        return {id(p.param) for p in self.params if any(id(o) in outputs for o in p.owners)}

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._outputs = {}
