"""What one pruning decision removes: a single weight, a whole output unit, N of every M inputs,
or a whole attention head.

A granularity turns per-weight scores into per-group scores and a per-group keep vector back into
a weight-shaped mask, so allocation and regrowth work on groups and never care about shapes. The
updater talks to it through four methods over all parameters at once (`score_groups`,
`kept_groups`, `group_sizes`, `expand_all`), so one group may span several parameters (a head);
the per-parameter granularities get them from `PerParam`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from lightning_prune.pruning.attention import HeadBlock, check_attention_heads, find_blocks
from lightning_prune.pruning.selection import PrunableParam

GRANULARITIES = ("unstructured", "structured", "n:m", "heads")


def parse_nm(nm: str) -> tuple[int, int]:
    """'2:4' -> (2, 4): keep N of every M consecutive input weights. Errors name `nm`."""
    try:
        n_text, m_text = str(nm).split(":")
        n, m = int(n_text), int(m_text)
    except ValueError:
        raise ValueError(f"nm must look like 'N:M' with integers, e.g. '2:4', got {nm!r}") from None
    if not 0 < n < m:
        raise ValueError(f"nm must satisfy 0 < N < M, got {nm!r}")
    return n, m


class Granularity:
    """What the updater and the callback ask of every granularity; the defaults fit most."""

    name = ""
    keeps_output_whole = False  # the output layer keeps every group (no class is removed)
    needs_output_layer = False  # `check` needs `is_output`, known after the first forward
    fixed_sparsity: float | None = None  # a pattern that fixes the sparsity (N:M)

    def check(self, params: Sequence[PrunableParam]) -> None:
        """Raise a ValueError naming the layer and the option when a layer does not fit."""
        del params

    def dense_names(self, params: Mapping[str, PrunableParam]) -> set[str]:
        """Parameters this granularity never prunes (left out of the sparsity)."""
        del params
        return set()

    def pattern_masks(self, store, raw, growth, goal: float, growing: bool):
        """Masks chosen inside each parameter by a fixed pattern, or None to let the updater
        split a budget over groups (`score_groups` ... `expand_all`)."""
        del store, raw, growth, goal, growing
        return None


class PerParam(Granularity):
    """The all-parameter interface of the updater, for granularities whose groups each lie in
    one parameter (`group_scores`, `groups_of`, `group_size`, `expand` per parameter)."""

    def score_groups(
        self, params: Mapping[str, PrunableParam], scores: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        return {name: self.group_scores(p, scores[name]) for name, p in params.items()}

    def kept_groups(
        self, params: Mapping[str, PrunableParam], masks: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        return {name: self.groups_of(p, masks[name]) for name, p in params.items()}

    def group_sizes(self, params: Mapping[str, PrunableParam]) -> dict[str, int]:
        return {name: self.group_size(p) for name, p in params.items()}

    def expand_all(
        self, params: Mapping[str, PrunableParam], keep: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        return {name: self.expand(params[name], k) for name, k in keep.items()}


class Unstructured(PerParam):
    """Each weight is its own group."""

    name = "unstructured"

    def group_scores(self, param: PrunableParam, score: torch.Tensor) -> torch.Tensor:
        return score.reshape(-1)

    def group_size(self, param: PrunableParam) -> int:
        return 1

    def expand(self, param: PrunableParam, keep: torch.Tensor) -> torch.Tensor:
        return keep.reshape(param.param.shape)

    def groups_of(self, param: PrunableParam, mask: torch.Tensor) -> torch.Tensor:
        return mask.reshape(-1)


class Structured(PerParam):
    """Output units (Linear rows, conv output channels, RNN gate rows), scored by their mean
    weight score.

    The output layer is kept whole (removing its rows would remove classes).
    """

    name = "structured"
    keeps_output_whole = True
    needs_output_layer = True

    def check(self, params: Sequence[PrunableParam]) -> None:
        if all(p.is_output for p in params):
            raise ValueError(
                "granularity='structured' keeps the output layer whole, and include matched only "
                f"the output layer {[p.name for p in params]}: nothing would be pruned"
            )

    def group_scores(self, param: PrunableParam, score: torch.Tensor) -> torch.Tensor:
        units = score.movedim(param.unit_axis, 0)
        return units.reshape(units.shape[0], -1).mean(dim=1)

    def group_size(self, param: PrunableParam) -> int:
        return param.param.numel() // param.param.shape[param.unit_axis]

    def expand(self, param: PrunableParam, keep: torch.Tensor) -> torch.Tensor:
        shape = param.param.shape
        view = [1] * len(shape)
        view[param.unit_axis] = -1
        return keep.view(view).expand(shape).clone()

    def groups_of(self, param: PrunableParam, mask: torch.Tensor) -> torch.Tensor:
        units = mask.movedim(param.unit_axis, 0)
        return units.reshape(units.shape[0], -1).any(dim=1)


class NM(Granularity):
    """N:M semi-structured: in every M consecutive weights along the input dimension keep N."""

    name = "n:m"

    def __init__(self, nm: str = "2:4") -> None:
        self.n, self.m = parse_nm(nm)

    @property
    def sparsity(self) -> float:
        return 1.0 - self.n / self.m

    @property
    def fixed_sparsity(self) -> float:  # type: ignore[override]
        return self.sparsity

    def pattern_masks(self, store, raw, growth, goal: float, growing: bool):
        """Within every block of M keep the best; pruned weights stay pruned unless growing."""
        per_block = min(self.m - self.n, int(round(goal * self.m)))
        masks = {}
        for name, mask in store.masks.items():
            if growing:
                rank = torch.where(mask, torch.full_like(raw[name], math.inf), growth[name].float())
            else:
                rank = torch.where(mask, raw[name], torch.full_like(raw[name], -1.0))
            masks[name] = self.mask(rank, per_block, store.params[name].block_axis)
        return masks

    def check(self, params: Sequence[PrunableParam]) -> None:
        for p in params:
            inputs = p.param.shape[p.block_axis]
            if inputs % self.m:
                raise ValueError(
                    f"nm='{self.n}:{self.m}': M={self.m} does not divide the input dimension "
                    f"{inputs} of {p.name}; exclude that layer (exclude=['{p.module_name}']) "
                    "or choose another M"
                )

    def mask(
        self, rank_scores: torch.Tensor, pruned_per_block: int, block_axis: int = 1
    ) -> torch.Tensor:
        """Keep the M - pruned_per_block highest-scoring weights of each block of M consecutive
        weights along `block_axis` (the input dimension)."""
        moved = rank_scores.movedim(block_axis, -1)
        blocks = moved.reshape(-1, self.m)
        keep = torch.ones_like(blocks, dtype=torch.bool)
        if pruned_per_block > 0:
            lowest = blocks.argsort(dim=1, stable=True)[:, :pruned_per_block]
            keep.scatter_(1, lowest, False)
        return keep.reshape(moved.shape).movedim(-1, block_axis).contiguous()


class Heads(Granularity):
    """Whole attention heads (see `attention`): for every nn.MultiheadAttention, and every
    separate-Linear block that `attention_heads` describes, one group per head made of its rows
    of q, k and v and its columns of the output projection.

    A head's score is the mean of the criterion's weight scores over all its weights (across
    q, k, v and out), and its group size is that weight count, so the global budget counts
    weights. Other weights stay dense (their masks all-ones) and are left out of the store's
    sparsity (`MaskStore.dense`): `target_sparsity` is the fraction of attention weights pruned.
    The block's first parameter (in_proj_weight, q_proj_weight or the q Linear's weight) is its
    leader: it carries the block's group scores and keep vector; the block's other parameters
    have no groups of their own and follow the leader's keep vector in `expand_all`.
    """

    name = "heads"

    def __init__(self, attention_heads: Mapping[str, Any] | None = None) -> None:
        self.attention_heads = check_attention_heads(attention_heads)

    def blocks(self, params: Mapping[str, PrunableParam]) -> list[HeadBlock]:
        """The complete blocks among `params` (a block partly dropped, frozen, stays dense)."""
        return find_blocks(list(params.values()), self.attention_heads, strict=False)

    def check(self, params: Sequence[PrunableParam]) -> None:
        if not find_blocks(params, self.attention_heads, strict=True):
            raise ValueError(
                "granularity='heads' needs nn.MultiheadAttention or attention_heads=...; the "
                "model has none"
                + (" among the selected modules (include/exclude)" if params else "")
            )

    def dense_names(self, params: Mapping[str, PrunableParam]) -> set[str]:
        """Parameters that no head covers: never pruned under this granularity."""
        covered = {n for b in self.blocks(params) for n in b.names}
        return set(params) - covered

    def score_groups(
        self, params: Mapping[str, PrunableParam], scores: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        out = {name: scores[name].new_zeros(0, dtype=torch.float32) for name in params}
        shapes = {name: p.param.shape for name, p in params.items()}
        for block in self.blocks(params):
            mean = block.head_sums(scores) / block.head_size(shapes)
            out[block.leader] = mean.float().to(scores[block.leader].device)
        return out

    def kept_groups(
        self, params: Mapping[str, PrunableParam], masks: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        out = {name: masks[name].new_zeros(0, dtype=torch.bool) for name in params}
        for block in self.blocks(params):
            out[block.leader] = block.head_any(masks).to(masks[block.leader].device)
        return out

    def group_sizes(self, params: Mapping[str, PrunableParam]) -> dict[str, int]:
        sizes = dict.fromkeys(params, 1)
        shapes = {name: p.param.shape for name, p in params.items()}
        for block in self.blocks(params):
            sizes[block.leader] = block.head_size(shapes)
        return sizes

    def expand_all(
        self, params: Mapping[str, PrunableParam], keep: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        out = {name: torch.ones_like(params[name].param, dtype=torch.bool) for name in keep}
        shapes = {name: p.param.shape for name, p in params.items()}
        for block in self.blocks(params):
            device = params[block.leader].param.device
            out.update(block.masks(keep[block.leader], shapes, device))
        return out


def build_granularity(
    granularity: str, nm: str, attention_heads: dict | None = None
) -> Granularity:
    if granularity == "heads":
        return Heads(attention_heads)
    if granularity == "unstructured":
        return Unstructured()
    if granularity == "structured":
        return Structured()
    if granularity == "n:m":
        return NM(nm)
    raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
