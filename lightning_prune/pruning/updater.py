"""One mask update: score (criterion) -> group (granularity) -> split the budget (allocation)
-> swap pruned and kept weights (regrowth). Pure computation; the callback applies the result.
"""

from __future__ import annotations

import math

import torch

from lightning_prune.pruning.allocation import allocate, lamp_transform
from lightning_prune.pruning.criteria import Importance
from lightning_prune.pruning.granularity import Granularity
from lightning_prune.pruning.masks import MaskStore
from lightning_prune.pruning.regrowth import RegrowthMode, Shadows, swap, swap_count
from lightning_prune.pruning.running_stats import RunningStats
from lightning_prune.pruning.selection import PrunableParam


def _mean(tensors: list[torch.Tensor]) -> float:
    count = sum(t.numel() for t in tensors)
    return float(sum(t.sum() for t in tensors)) / max(1, count)


class MaskUpdater:
    """Computes new masks that reach a sparsity goal.

    When the goal is above the current sparsity, kept weights are ranked by the criterion and
    pruned weights stay pruned (then regrowth may swap some); when it is below (a back-off),
    the pruned weights with the best growth score (shadow importance for DNS, else the dense
    gradient) come back.
    """

    def __init__(
        self,
        criterion: Importance,
        granularity: Granularity,
        allocation: str,
        min_density: float,
        output_min_density: float,
        regrowth: RegrowthMode,
        regrow_fraction: float,
    ) -> None:
        self.criterion, self.granularity, self.allocation = criterion, granularity, allocation
        self.min_density, self.output_min_density = min_density, output_min_density
        self.regrowth, self.regrow_fraction = regrowth, regrow_fraction

    def floor(self, param: PrunableParam) -> float:
        if param.is_output:
            return 1.0 if self.granularity.keeps_output_whole else self.output_min_density
        return self.min_density

    def _raw_scores(
        self, store: MaskStore, stats: RunningStats, shadows: Shadows | None
    ) -> dict[str, torch.Tensor]:
        weights = (
            {name: p.param.detach() for name, p in store.params.items()}
            if shadows is None
            else shadows.effective(store.params, store.pruned_float)
        )
        raw = self.criterion.score_all(list(store.params.values()), weights, stats)
        return self._score_frozen_by_magnitude(store, raw)

    def _score_frozen_by_magnitude(
        self, store: MaskStore, raw: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Frozen weights (pruned only with `prune_frozen`) have no gradient, so a gradient
        criterion would score them 0 and prune them first: they get |w| instead, scaled to the
        mean score of the trained weights so one global ranking still compares them fairly."""
        if not self.criterion.requires & {"grad", "taylor"}:
            return raw
        frozen = [name for name, p in store.params.items() if p.frozen]
        if not frozen:
            return raw
        trained = [s for name, s in raw.items() if name not in frozen]
        magnitude = {n: store.params[n].param.detach().abs().float() for n in frozen}
        trained_mean = _mean(trained) if trained else 1.0
        scale = trained_mean / max(_mean(list(magnitude.values())), 1e-30)
        return {**raw, **{n: m * scale for n, m in magnitude.items()}}

    def _growth_scores(
        self, store: MaskStore, stats: RunningStats, raw: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        if self.regrowth.shadows:
            return raw
        scores = {}
        for name, p in store.params.items():
            if name in stats.grad:
                scores[name] = stats.grad[name]
            elif p.param.grad is not None:
                scores[name] = p.param.grad.detach().abs()
            else:
                scores[name] = raw[name]
        return scores

    @torch.no_grad()
    def update(
        self,
        store: MaskStore,
        stats: RunningStats,
        shadows: Shadows | None,
        goal: float,
        step: int,
        swap_end_step: int,
    ) -> dict[str, torch.Tensor]:
        """New bool masks (per parameter name) at sparsity `goal`."""
        raw = self._raw_scores(store, stats, shadows)
        gran = self.granularity
        store.dense = frozenset(gran.dense_names(store.params))  # left out of the sparsity
        growing = goal < store.sparsity() - 1e-9
        growth = self._growth_scores(store, stats, raw) if growing or self.regrowth.swaps else {}
        pattern = gran.pattern_masks(store, raw, growth, goal, growing)
        if pattern is not None:
            return pattern
        params = store.params
        group_raw = gran.score_groups(params, raw)
        kept_groups = gran.kept_groups(params, store.masks)
        group_sizes = gran.group_sizes(params)
        group_growth = (
            {n: s.float() for n, s in gran.score_groups(params, growth).items()} if growth else {}
        )
        composite, sizes, floors = {}, {}, {}
        for name, p in params.items():
            scores = group_raw[name]
            ranked = lamp_transform(scores) if self.allocation == "lamp" else scores
            kept = kept_groups[name]
            if growing:
                grow = group_growth[name]
                composite[name] = torch.where(kept, torch.full_like(ranked, math.inf), grow)
            else:
                composite[name] = torch.where(kept, ranked, torch.full_like(ranked, -math.inf))
            sizes[name] = group_sizes[name]
            floors[name] = self.floor(p)
        method = "global" if self.allocation == "lamp" else self.allocation
        keep = allocate(composite, sizes, goal, method, floors)
        if self.regrowth.swaps and not growing:
            keep = self._swap(store, keep, group_raw, group_growth, step, swap_end_step)
        return gran.expand_all(params, keep)

    def _swap(
        self, store, keep, group_raw, group_growth, step, end_step
    ) -> dict[str, torch.Tensor]:
        out = {}
        for name, k in keep.items():
            p = store.params[name]
            if self.floor(p) >= 1.0:
                out[name] = k
                continue
            kept, pruned = int(k.sum()), int((~k).sum())
            count = swap_count(kept, pruned, self.regrow_fraction, step, end_step)
            grow = group_growth[name]
            better = self.regrowth.shadows
            out[name] = swap(k, group_raw[name], grow, count, require_better=better)
        return out
