"""What one pruning decision removes: a single weight, a whole output unit, or N of every M inputs.

A granularity turns per-weight scores into per-group scores and a per-group keep vector back into
a weight-shaped mask, so allocation and regrowth work on groups and never care about shapes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lightning_prune.pruning.selection import PrunableParam

GRANULARITIES = ("unstructured", "structured", "n:m")


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


class Unstructured:
    """Each weight is its own group."""

    name = "unstructured"

    def check(self, params: Sequence[PrunableParam]) -> None:
        del params

    def group_scores(self, param: PrunableParam, score: torch.Tensor) -> torch.Tensor:
        return score.reshape(-1)

    def group_size(self, param: PrunableParam) -> int:
        return 1

    def expand(self, param: PrunableParam, keep: torch.Tensor) -> torch.Tensor:
        return keep.reshape(param.param.shape)

    def groups_of(self, param: PrunableParam, mask: torch.Tensor) -> torch.Tensor:
        return mask.reshape(-1)


class Structured:
    """Output units (Linear rows, conv output channels, RNN gate rows), scored by their mean
    weight score.

    The output layer is kept whole (removing its rows would remove classes).
    """

    name = "structured"

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


class NM:
    """N:M semi-structured: in every M consecutive weights along the input dimension keep N."""

    name = "n:m"

    def __init__(self, nm: str = "2:4") -> None:
        self.n, self.m = parse_nm(nm)

    @property
    def sparsity(self) -> float:
        return 1.0 - self.n / self.m

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


def build_granularity(
    granularity: str, nm: str, attention_heads: dict | None = None
) -> Unstructured | Structured | NM:
    if granularity == "unstructured":
        return Unstructured()
    if granularity == "structured":
        return Structured()
    if granularity == "n:m":
        return NM(nm)
    raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
