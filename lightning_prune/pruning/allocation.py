"""How a model-wide sparsity target is split across layers.

- global: one ranking over all layers (layers with many unimportant weights lose more)
- layerwise: every layer pruned to the same sparsity
- lamp: global ranking of LAMP scores (Lee et al. 2021), which rescale each layer's scores by
  the mass of the scores above them, so the per-layer ratio is decided from the weights themselves

Every layer keeps at least `min_density` of its weights (the output layer `output_min_density`).
Scores of +inf mean "must keep", -inf "prune first" (the callers use this for the mask state).
"""

from __future__ import annotations

import math

import torch

ALLOCATIONS = ("global", "layerwise", "lamp")


def lamp_transform(scores: torch.Tensor) -> torch.Tensor:
    """LAMP score of each entry: s_u^2 / sum of s_v^2 over entries with s_v >= s_u."""
    squared = scores.double().pow(2)
    order = squared.argsort(stable=True)
    sorted_sq = squared[order]
    suffix = sorted_sq.flip(0).cumsum(0).flip(0)
    lamp = torch.empty_like(squared)
    lamp[order] = sorted_sq / suffix.clamp_min(1e-300)
    return lamp.float()


def _protect_floor(scores: torch.Tensor, floor_groups: int) -> torch.Tensor:
    """Mark the `floor_groups` best groups of a layer as must-keep (+inf)."""
    if floor_groups <= 0:
        return scores
    scores = scores.clone()
    best = scores.topk(min(floor_groups, scores.numel())).indices
    scores[best] = math.inf
    return scores


def _prune_prefix(scores: torch.Tensor, sizes: torch.Tensor, budget: int) -> torch.Tensor:
    """Keep-vector that prunes the lowest-scoring groups whose sizes add up to <= budget.

    Ties go by position (a stable sort). Groups of one size take a selection instead of a full
    sort: several times faster on the ~10^5-10^6 weights a global unstructured update ranks.
    """
    keep = torch.ones_like(scores, dtype=torch.bool)
    if budget <= 0:
        return keep
    size = int(sizes[0]) if sizes.numel() else 1
    if bool((sizes == size).all()):
        return _prune_lowest(scores, min(budget // size, int((scores != math.inf).sum())))
    order = scores.argsort(stable=True)
    cumulative = sizes[order].cumsum(0)
    candidate = (cumulative <= budget) & torch.isfinite(scores[order]).logical_or(scores[order] < 0)
    keep[order[candidate]] = False
    return keep


def _prune_lowest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Keep-vector without the `count` lowest scores (ties by position), by selection."""
    keep = torch.ones_like(scores, dtype=torch.bool)
    if count <= 0:
        return keep
    threshold = scores.kthvalue(count).values
    below = scores < threshold
    ties = (scores == threshold).nonzero().flatten()[: count - int(below.sum())]
    keep[below] = False
    keep[ties] = False
    return keep


def allocate(
    scores: dict[str, torch.Tensor],
    group_sizes: dict[str, int],
    sparsity: float,
    method: str,
    floors: dict[str, float],
) -> dict[str, torch.Tensor]:
    """Per-layer keep vectors over groups so that about `sparsity` of all weights are pruned.

    Args:
        scores: 1-D group scores per layer (higher = keep).
        group_sizes: weights per group of each layer.
        sparsity: target fraction of pruned weights over all layers.
        method: "global", "layerwise" or "lamp" (pass LAMP-transformed scores for "lamp").
        floors: minimum kept fraction of each layer's groups.
    """
    if method not in ALLOCATIONS:
        raise ValueError(f"allocation must be one of {ALLOCATIONS}, got {method!r}")
    protected = {
        name: _protect_floor(s, math.ceil(floors.get(name, 0.0) * s.numel()))
        for name, s in scores.items()
    }
    if method == "layerwise":
        keep = {}
        for name, s in protected.items():
            size = group_sizes[name]
            budget = round(sparsity * s.numel()) * size
            sizes = torch.full_like(s, size, dtype=torch.long)
            keep[name] = _prune_prefix(s, sizes, budget)
        return keep
    names = list(protected)
    flat = torch.cat([protected[n].reshape(-1).cpu() for n in names])
    sizes = torch.cat(
        [torch.full((protected[n].numel(),), group_sizes[n], dtype=torch.long) for n in names]
    )
    budget = round(sparsity * int(sizes.sum()))
    flat_keep = _prune_prefix(flat, sizes, budget)
    keep, offset = {}, 0
    for name in names:
        count = protected[name].numel()
        keep[name] = flat_keep[offset : offset + count].to(scores[name].device)
        offset += count
    return keep
