"""Batched inference that skips dropped channels: samples are grouped by the channels they keep.

A per-sample gather (each input's kept weight rows, then `bmm`) is slower than the dense layer
on CPU at batch 256: Linear layers turn into one matrix-vector product per input (memory bound)
and convolutions need an explicit im2col. Grouping keeps the fast dense kernels: at each gated
layer the samples of a group are sorted by the channels they keep and read, runs of similar sets
become subgroups of at least `min_group` samples, and each subgroup runs one dense layer over
the union of its channels (weight rows and input columns gathered once per subgroup); a channel
in the union that a sample dropped is zeroed by its gate scale, so outputs equal the masked
forward. Trained gates keep a large shared core of channels per layer, so a few subgroups cover
a batch. Convolutions run channels-last: oneDNN is several times faster there than in NCHW at
the odd channel counts that gating leaves.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lightning_prune.dynamic.gates import NORMS, ZERO_PRESERVING, GatedLayer, gated_layers
from lightning_prune.dynamic.skipping import MacCount, dense_sizes, layer_macs

COMMUTES = (
    nn.ReLU, nn.LeakyReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
    nn.Dropout, nn.Dropout2d, nn.Identity,
)  # fmt: skip
KEY_BITS = 62  # channels that decide the grouping: the most evenly split ones, packed in int64


@dataclass
class Group:
    """Samples `rows` of the batch holding `x` over the channels `channels` (None: all);
    `live[i, j]` says whether sample i really kept channel j (None: all kept)."""

    rows: torch.Tensor
    x: torch.Tensor
    channels: torch.Tensor | None = None
    live: torch.Tensor | None = None
    scale: torch.Tensor | None = None  # gate scale over `channels`, due after `attach` runs
    attach: nn.Module | None = None

    def live_counts(self) -> torch.Tensor:
        """Channels each sample really reads (what its own batch-1 run would read)."""
        if self.live is None:
            return torch.full((len(self.rows),), self.x.shape[1], dtype=torch.long)
        return self.live.sum(1)


def _gateable(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)


def _parts(keys: torch.Tensor, min_group: int) -> list[torch.Tensor] | None:
    """Sample positions in runs of similar keys (rows of a bool matrix), each of at least
    `min_group` samples; None when the group stays whole. Samples are sorted by the bits of the
    most evenly split columns, so neighbours share most channels."""
    n = keys.shape[0]
    if n < 2 * min_group:
        return None
    usage = keys.float().mean(0)
    spread = (usage - 0.5).abs()
    order = torch.argsort(spread, stable=True)[:KEY_BITS]
    order = order[spread.index_select(0, order) < 0.5]  # columns all samples agree on: no say
    if len(order) == 0:
        return None
    weights = torch.pow(2, torch.arange(len(order) - 1, -1, -1, dtype=torch.long))
    packed = (keys.index_select(1, order).long() * weights).sum(1)
    _, inverse, counts = torch.unique(packed, return_inverse=True, return_counts=True)
    by_key = torch.argsort(inverse, stable=True)
    parts, start, size = [], 0, 0
    for count in counts.tolist():
        size += count
        if size >= min_group and n - (start + size) >= min_group:
            parts.append(by_key[start : start + size])
            start, size = start + size, 0
    parts.append(by_key[start:])
    return parts if len(parts) > 1 else None


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    """`t` with exact channels-last strides; `contiguous(memory_format=...)` leaves a 1-channel
    tensor's NCHW strides, and oneDNN then picks its slow NCHW kernels for the whole layer."""
    n, c, h, w = t.shape
    strides = (c * h * w, 1, w * c, c)
    if t.stride() == strides:
        return t
    return torch.empty_strided(t.shape, strides, dtype=t.dtype, device=t.device).copy_(t)


def _take(x: torch.Tensor, samples: torch.Tensor, channels: torch.Tensor | None) -> torch.Tensor:
    """Rows `samples` and channels `channels` of `x`, keeping a channels-last layout
    (index_select would return NCHW)."""
    last = x.dim() == 4
    view = x.permute(0, 2, 3, 1) if last else x
    view = view.index_select(0, samples)
    if channels is not None:
        view = view.index_select(view.dim() - 1 if last else 1, channels)
    return view.permute(0, 3, 1, 2) if last else view


def _subgroup(group: Group, part: torch.Tensor) -> Group:
    """The samples `part` of `group`, reading only the input channels some of them keep."""
    live = None if group.live is None else group.live.index_select(0, part)
    channels, keep = group.channels, None
    if live is not None:
        used = live.any(0)
        if not bool(used.all()):
            keep = used.nonzero().flatten()
            live = live.index_select(1, keep)
            channels = keep if channels is None else channels.index_select(0, keep)
    return Group(group.rows.index_select(0, part), _take(group.x, part, keep), channels, live)


def _full(group: Group, width: int) -> torch.Tensor:
    """The group's activations with every channel (dropped ones zero)."""
    if group.channels is None:
        return group.x
    whole = group.x.new_zeros(group.x.shape[0], width, *group.x.shape[2:])
    return whole.index_copy(1, group.channels, group.x)


def _gate(item: GatedLayer, group: Group, ran: MacCount) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample of `group`: the gate scale over all output channels and the kept mask."""
    gate, x, n = item.gate, group.x, len(group.rows)
    if gate.bins is not None:
        pooled, weight = gate.pool(_full(group, dense_sizes(item.layer)[0])), gate.weight
        needed = torch.full((n,), weight.numel(), dtype=torch.long)
    else:
        pooled = x.mean(dim=(2, 3)) if x.dim() == 4 else x
        channels = group.channels
        weight = gate.weight if channels is None else gate.weight.index_select(1, channels)
        needed = group.live_counts() * gate.channels
    ran.executed += weight.numel() * n
    ran.gate += weight.numel() * n
    ran.per_input.index_add_(0, group.rows, needed)
    scale, mask = gate.scale_and_mask(pooled, weight)
    if mask is None:
        return scale, torch.ones(n, gate.channels, dtype=torch.bool, device=x.device)
    return scale, mask


def _run(layer: nn.Module, group: Group, out_rows, out_counts, ran: MacCount) -> torch.Tensor:
    """The layer on the group's channels for output channels `out_rows` (None: all); each
    sample is charged `out_counts` outputs times the inputs it reads in `per_input`."""
    weight, bias = layer.weight, layer.bias
    if out_rows is not None:
        weight = weight.index_select(0, out_rows)
        bias = None if bias is None else bias.index_select(0, out_rows)
    if group.channels is not None:
        weight = weight.index_select(1, group.channels)
    if isinstance(layer, nn.Conv2d):
        out = _channels_last(layer._conv_forward(group.x, _channels_last(weight), bias))
    else:
        out = F.linear(group.x, weight, bias)
    dense_in, dense_out = dense_sizes(layer)
    n = len(group.rows)
    ran.executed += layer_macs(layer, weight.shape[1], weight.shape[0], out) * n
    ran.dense += layer_macs(layer, dense_in, dense_out, out) * n
    per_pair = layer_macs(layer, 1, 1, out)
    ran.per_input.index_add_(0, group.rows, out_counts * group.live_counts() * per_pair)
    return out


def _gated_layer(item: GatedLayer, group: Group, ran: MacCount, min_group: int) -> list[Group]:
    scale, mask = _gate(item, group, ran)
    ran.off[item.name] = ran.off.get(item.name, 0) + (~mask).sum(0)
    kept_total, total = ran.kept.get(item.name, (0, 0))
    ran.kept[item.name] = (kept_total + int(mask.sum()), total + mask.numel())
    keys = mask if group.live is None else torch.cat([group.live, mask], dim=1)
    parts = _parts(keys, min_group)
    out = []
    for part in parts or [None]:
        sub = group if part is None else _subgroup(group, part)
        sub_mask = mask if part is None else mask.index_select(0, part)
        sub_scale = scale if part is None else scale.index_select(0, part)
        used = sub_mask.any(0)
        out_rows = None if bool(used.all()) else used.nonzero().flatten()
        result = _run(item.layer, sub, out_rows, sub_mask.sum(1), ran)
        if out_rows is not None:
            sub_mask, sub_scale = (
                sub_mask.index_select(1, out_rows),
                sub_scale.index_select(1, out_rows),
            )
        out.append(Group(sub.rows, result, out_rows, sub_mask, sub_scale, item.attach))
    return out


def _norm(module: nn.Module, group: Group) -> torch.Tensor:
    idx = group.channels
    if idx is None:
        return module(group.x)

    def pick(values):
        return None if values is None else values.index_select(0, idx)

    return F.batch_norm(
        group.x, pick(module.running_mean), pick(module.running_var),
        pick(module.weight), pick(module.bias), False, 0.0, module.eps,
    )  # fmt: skip


def _flatten(module: nn.Flatten, group: Group) -> Group:
    if group.channels is None or group.x.dim() != 4:
        group.x = module(group.x)
        return group
    area = group.x.shape[2] * group.x.shape[3]
    spots = torch.arange(area, device=group.x.device)
    group.channels = (group.channels[:, None] * area + spots).reshape(-1)
    if group.live is not None:
        group.live = group.live.repeat_interleave(area, dim=1)
    group.x = module(group.x)
    return group


def _merge(groups: list[Group], batch: int, width: int) -> Group:
    """All groups back in one full-width tensor, in batch order."""
    first = groups[0]
    if len(groups) == 1 and first.channels is None and torch.equal(first.rows, torch.arange(batch)):
        return Group(first.rows, first.x)
    parts = [_full(group, width) for group in groups]
    whole = parts[0].new_zeros(batch, *parts[0].shape[1:])
    for group, part in zip(groups, parts, strict=True):
        whole.index_copy_(0, group.rows, part)
    return Group(torch.arange(batch), whole)


def _settle(group: Group, module: nn.Module | None) -> None:
    """Apply the group's due gate scale before `module` runs, unless `module` commutes with a
    non-negative per-channel scale (ReLU, pooling): then it is applied later, on fewer values
    (max-pooling a scaled map equals scaling the pooled map exactly, for scales >= 0)."""
    if group.scale is None or group.attach is not None:
        return
    if module is not None and isinstance(module, COMMUTES) and bool((group.scale >= 0).all()):
        return
    group.x = group.x * group.scale.view(*group.scale.shape, *([1] * (group.x.dim() - 2)))
    group.scale = None


class GroupedSkippingPath:
    """Inference of a gated model on a batch that runs, per group of samples, only the channels
    they keep (module docstring); `path(x)` -> (logits, MacCount over the batch).

    The MacCount's `executed` is what ran (a channel in a group's union runs for every sample of
    the group, gates included); `per_input[i]` is what input i needs on its own, exactly what the
    batch-1 path runs for it; `off[name][c]` counts the inputs whose gate dropped channel c.
    `chain` is the nn.Sequential that holds the gated layers and computes `root`'s whole output
    (a Classifier's `net`; `root` itself when it is one). `min_group`: smallest subgroup; 1 splits
    into nearly exact sets (more, smaller calls), the batch size never splits.
    """

    def __init__(
        self, root: nn.Module, chain: nn.Sequential | None = None, min_group: int = 64
    ) -> None:
        self.root, self.layers = root, gated_layers(root)
        if not self.layers:
            raise ValueError("the model has no gates: attach them with DynamicGating first")
        if isinstance(min_group, bool) or not isinstance(min_group, int) or min_group < 1:
            raise ValueError(f"min_group must be an integer >= 1, got {min_group!r}")
        chain = chain if chain is not None else root if isinstance(root, nn.Sequential) else None
        if chain is None or not all(any(i.layer is m for m in chain) for i in self.layers):
            raise ValueError(
                "the grouped skipping path needs the nn.Sequential that holds every gated layer"
                " and computes the whole output (pass chain=, e.g. a Classifier's net)"
            )
        self.chain, self.min_group = chain, min_group
        self.gated = {item.layer: item for item in self.layers}

    def _layer(self, module: nn.Module, groups: list[Group], ran: MacCount) -> list[Group]:
        item = self.gated.get(module)
        if item is not None:
            return [sub for g in groups for sub in _gated_layer(item, g, ran, self.min_group)]
        full = torch.tensor(dense_sizes(module)[1])
        return [Group(g.rows, _run(module, g, None, full, ran)) for g in groups]

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, MacCount]:
        if self.root.training:
            raise ValueError("the skipping path needs eval mode: call model.eval() first")
        if x.dim() == 4:
            x = _channels_last(x)
        batch = x.shape[0]
        ran = MacCount(per_input=torch.zeros(batch, dtype=torch.long))
        groups, width = [Group(torch.arange(batch), x)], x.shape[1]
        for module in self.chain:
            for g in groups:
                _settle(g, module)
            if _gateable(module):
                groups, width = self._layer(module, groups, ran), dense_sizes(module)[1]
            elif isinstance(module, NORMS):
                for g in groups:
                    g.x = _norm(module, g)
            elif isinstance(module, nn.Flatten):
                width *= groups[0].x[0, 0].numel() if groups[0].x.dim() == 4 else 1
                groups = [_flatten(module, g) for g in groups]
            elif isinstance(module, ZERO_PRESERVING):
                for g in groups:
                    g.x = module(g.x)
            else:  # unknown module: give it every channel of every sample
                merged = _merge(groups, batch, width)
                merged.x = module(merged.x)
                groups, width = [merged], merged.x.shape[1]
            for g in groups:
                if g.attach is module:
                    g.attach = None  # the scale is due from here on
        for g in groups:
            _settle(g, None)
        return _merge(groups, batch, width).x.contiguous(), ran


def gated_forward_grouped(
    root: nn.Module, x: torch.Tensor, chain: nn.Sequential | None = None, min_group: int = 64
) -> tuple[torch.Tensor, MacCount]:
    """Logits of a batch (eval mode) running only kept channels per group of samples, and the
    MACs that ran; a one-off `GroupedSkippingPath(root, chain, min_group)(x)`."""
    return GroupedSkippingPath(root, chain, min_group)(x)
