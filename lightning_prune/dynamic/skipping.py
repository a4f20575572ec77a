"""Batch-1 inference that skips the work of dropped channels, and counts the MACs that ran.

Where the gated layers sit in a plain chain (an nn.Sequential that computes the whole output),
`gated_forward_batch1` computes each gate first, runs only the kept output channels of the layer
(gathered weight rows) and lets the next layer read only those channels (gathered weight
columns), so dropped channels cost nothing downstream either. Without a chain it falls back to
running the model's own forward with each gated layer computing only its kept output rows: fewer
MACs for that layer, none saved in the layer after it. Batches: `lightning_prune.dynamic.grouped`.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from lightning_prune.dynamic.gates import NORMS, ZERO_PRESERVING, GatedLayer, gated_layers


@dataclass
class MacCount:
    """MACs that ran, the dense model's MACs, and output channels kept per layer
    (`kept[name] = (kept, total)`), for one input or summed over a batch. Gate MACs are part of
    `executed`. The grouped batch path also fills `per_input` (the MACs each input needs on its
    own: what the batch-1 path runs for it) and `off` (per gated layer, on how many inputs each
    output channel was gated off)."""

    executed: int = 0
    dense: int = 0
    gate: int = 0
    kept: dict[str, tuple[int, int]] = field(default_factory=dict)
    per_input: torch.Tensor | None = None
    off: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        return self.executed / self.dense if self.dense else 1.0


def layer_macs(layer: nn.Module, inputs: int, outputs: int, out: torch.Tensor) -> int:
    """MACs of a Conv2d/Linear run with `inputs` input and `outputs` output channels."""
    if isinstance(layer, nn.Conv2d):
        kh, kw = layer.kernel_size
        return outputs * inputs * kh * kw * out.shape[-2] * out.shape[-1]
    return outputs * inputs


def _scatter(x: torch.Tensor, idx: torch.Tensor | None, full: int) -> torch.Tensor:
    """The compact tensor `x` (channels `idx` of `full`) written back into a full zero tensor."""
    if idx is None:
        return x
    whole = x.new_zeros(x.shape[0], full, *x.shape[2:])
    whole[:, idx] = x
    return whole


def _gather(weight: torch.Tensor, rows, cols) -> torch.Tensor:
    """Weight rows (output channels) and columns (input channels); index_select, which copies
    only what it keeps, is several times faster than advanced indexing on these sizes."""
    if rows is not None:
        weight = weight.index_select(0, rows)
    return weight if cols is None else weight.index_select(1, cols)


def _conv_rows(layer: nn.Conv2d, x: torch.Tensor, weight, bias) -> torch.Tensor:
    """A small batch-1 conv as im2col + matmul: a per-input weight gives mkldnn nothing to
    cache, and this is about 4x faster than `conv2d` at LeNet sizes."""
    if isinstance(layer.padding, str) or layer.padding_mode != "zeros":
        return layer._conv_forward(x, weight, bias)
    kh, kw = layer.kernel_size
    (ph, pw), (sh, sw), (dh, dw) = layer.padding, layer.stride, layer.dilation
    out_h = (x.shape[2] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    out_w = (x.shape[3] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    columns = F.unfold(x, (kh, kw), layer.dilation, layer.padding, layer.stride)
    out = weight.flatten(1) @ columns[0]
    if bias is not None:
        out = out + bias[:, None]
    return out.view(1, weight.shape[0], out_h, out_w)


def _run_layer(layer, x, rows, cols, ran: MacCount, dense_in: int, dense_out: int):
    """Run a Conv2d/Linear on compact input `x` (input channels `cols`) for output rows `rows`."""
    weight = _gather(layer.weight, rows, cols)
    bias = layer.bias if layer.bias is None or rows is None else layer.bias.index_select(0, rows)
    if isinstance(layer, nn.Conv2d):
        out = (
            _conv_rows(layer, x, weight, bias)
            if x.shape[0] == 1
            else layer._conv_forward(x, weight, bias)
        )
    else:
        out = F.linear(x, weight, bias)
    ran.executed += layer_macs(layer, weight.shape[1], weight.shape[0], out)
    ran.dense += layer_macs(layer, dense_in, dense_out, out)
    return out


def dense_sizes(layer: nn.Module) -> tuple[int, int]:
    """(input, output) channels of a Conv2d, or features of a Linear."""
    if isinstance(layer, nn.Conv2d):
        return layer.in_channels, layer.out_channels
    return layer.in_features, layer.out_features


def _gate_scale(item: GatedLayer, x, idx, full, ran: MacCount):
    """Saliency and kept channels from the compact input; the gate reads only live inputs."""
    gate = item.gate
    if gate.bins is not None:
        pooled, weight = gate.pool(_scatter(x, idx, full)), gate.weight
    else:
        pooled = x.mean(dim=(2, 3)) if x.dim() == 4 else x
        weight = gate.weight if idx is None else gate.weight.index_select(1, idx)
    ran.gate += weight.numel()
    ran.executed += weight.numel()
    values, kept = gate.select(pooled, weight)
    if kept is None:  # budget 1: every channel runs
        return values[0], torch.arange(gate.channels, device=values.device)
    return values[0], kept[0]


def _pick(values: torch.Tensor | None, idx: torch.Tensor) -> torch.Tensor | None:
    return None if values is None else values.index_select(0, idx)


def _chain_forward(chain: nn.Sequential, x: torch.Tensor, gated: dict, ran: MacCount):
    idx, full = None, x.shape[1]
    pending: tuple[nn.Module, torch.Tensor] | None = None
    for module in chain:
        item = gated.get(module)
        if isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1):
            dense_in, dense_out = dense_sizes(module)
            rows = None
            if item is not None:
                scale, rows = _gate_scale(item, x, idx, full, ran)
                ran.kept[item.name] = (len(rows), item.gate.channels)
                pending = (item.attach, scale)
            x = _run_layer(module, x, rows, idx, ran, dense_in, dense_out)
            idx, full = rows, dense_out
        elif isinstance(module, NORMS) and idx is not None:
            x = F.batch_norm(
                x, _pick(module.running_mean, idx), _pick(module.running_var, idx),
                _pick(module.weight, idx), _pick(module.bias, idx), False, 0.0, module.eps,
            )  # fmt: skip
        elif isinstance(module, nn.Flatten) and idx is not None and x.dim() == 4:
            area = x.shape[2] * x.shape[3]
            idx = (idx[:, None] * area + torch.arange(area, device=idx.device)).reshape(-1)
            full, x = full * area, module(x)
        elif isinstance(module, ZERO_PRESERVING):
            x = module(x)
        else:  # unknown module: give it every channel
            x, idx = module(_scatter(x, idx, full)), None
        if pending is not None and pending[0] is module:
            x = x * pending[1].view(1, -1, *([1] * (x.dim() - 2)))
            pending = None
    return _scatter(x, idx, full)


@contextmanager
def _rows_only(layers: list[GatedLayer], ran: MacCount):
    """Fallback: each gated layer computes only its kept rows; others are counted dense."""
    saved, handles = {}, []

    def rows_forward(item: GatedLayer):
        def forward(x):
            scale, rows = _gate_scale(item, x, None, x.shape[1], ran)
            ran.kept[item.name] = (len(rows), item.gate.channels)
            dense_in, dense_out = dense_sizes(item.layer)
            out = _run_layer(item.layer, x, rows, None, ran, dense_in, dense_out)
            full_scale = scale.new_zeros(1, dense_out)
            full_scale[0, rows] = scale
            item.gate._scale = full_scale
            return _scatter(out, rows, dense_out)

        return forward

    def count(module, args, out):
        dense_in, dense_out = dense_sizes(module)
        macs = layer_macs(module, dense_in, dense_out, out)
        ran.executed, ran.dense = ran.executed + macs, ran.dense + macs

    try:
        for item in layers:
            item.gate.external = True
            saved[item.layer] = item.layer.__dict__.get("forward")
            item.layer.forward = rows_forward(item)
        yield handles, count
    finally:
        for handle in handles:
            handle.remove()
        for item in layers:
            item.gate.external = False
            item.gate._scale = None
            if saved[item.layer] is None:
                del item.layer.forward
            else:
                item.layer.forward = saved[item.layer]


class SkippingPath:
    """Batch-1 inference of a gated model that runs only kept channels; build once, call per
    input (`path(x)` -> (logits, MacCount)).

    `chain` is the nn.Sequential that holds the gated layers and computes `root`'s whole output
    (a Classifier's `net`); the caller vouches for that. Without it (and when `root` is not
    itself an nn.Sequential) the per-layer fallback runs: see the module docstring.
    """

    def __init__(self, root: nn.Module, chain: nn.Sequential | None = None) -> None:
        self.root, self.layers = root, gated_layers(root)
        if not self.layers:
            raise ValueError("the model has no gates: attach them with DynamicGating first")
        chain = chain if chain is not None else root if isinstance(root, nn.Sequential) else None
        in_chain = chain is not None and all(
            any(item.layer is m for m in chain) for item in self.layers
        )
        self.chain = chain if in_chain else None
        self.gated = {item.layer: item for item in self.layers}

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, MacCount]:
        if x.shape[0] != 1:
            raise ValueError(f"the skipping path takes one input (batch size 1), got {x.shape[0]}")
        if self.root.training:
            raise ValueError("the skipping path needs eval mode: call model.eval() first")
        ran = MacCount()
        if self.chain is not None:
            return _chain_forward(self.chain, x, self.gated, ran), ran
        with _rows_only(self.layers, ran) as (handles, count):
            for module in self.root.modules():
                if isinstance(module, (nn.Linear, nn.Conv2d)) and module not in self.gated:
                    handles.append(module.register_forward_hook(count))
            out = self.root(x)
        return out, ran


def gated_forward_batch1(
    root: nn.Module, x: torch.Tensor, chain: nn.Sequential | None = None
) -> tuple[torch.Tensor, MacCount]:
    """Logits of one input (batch 1, eval mode) running only kept channels, and the MACs that
    ran; a one-off `SkippingPath(root, chain)(x)`."""
    return SkippingPath(root, chain)(x)


@torch.no_grad()
def dense_macs(model: nn.Module, x: torch.Tensor) -> int:
    """MACs of every Conv2d/Linear of `model` (gates off) for the input `x`, per input."""
    total, handles = [0], []

    def count(module, args, out):
        dense_in, dense_out = dense_sizes(module)
        total[0] += layer_macs(module, dense_in, dense_out, out)

    gates = [item.gate for item in gated_layers(model)]
    for gate in gates:
        gate.enabled = False
    try:
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                handles.append(module.register_forward_hook(count))
        model(x)
    finally:
        for handle in handles:
            handle.remove()
        for gate in gates:
            gate.enabled = True
    return total[0] // x.shape[0]
