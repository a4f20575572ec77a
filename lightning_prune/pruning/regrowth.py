"""Regrowth: masks are not monotone; pruned weights can come back.

- "dns" (Dynamic Network Surgery, Guo et al. 2016): every pruned weight keeps a shadow value that
  the masked-out gradient keeps updating; it is spliced back (with its shadow value) when its
  importance beats the weakest kept weight of its layer.
- "rigl" (Evci et al. 2020): the pruned weights with the largest dense gradient regrow at zero.

Both drop exactly as many kept weights as they regrow, per layer, so sparsity stays on schedule.
The number of swaps decays with a cosine from `regrow_fraction` of the kept weights to 0 at `end`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from lightning_prune.pruning.selection import PrunableParam

REGROWTH = ("none", "dns", "rigl")


class RegrowthMode:
    """What a regrowth name implies, so no other module compares the strings."""

    def __init__(self, name: str) -> None:
        if name not in REGROWTH:
            raise ValueError(f"regrowth must be one of {list(REGROWTH)}, got {name!r}")
        self.name = name

    @property
    def swaps(self) -> bool:
        """Kept and pruned weights are exchanged during the ramp."""
        return self.name != "none"

    @property
    def shadows(self) -> bool:
        """Pruned weights keep training shadow values (DNS): they regrow with them, and a
        swap must beat the weight it replaces."""
        return self.name == "dns"


def swap_count(kept: int, pruned: int, fraction: float, step: int, end_step: int) -> int:
    """How many groups of a layer to drop and regrow at `step` (cosine-decayed)."""
    if end_step <= 0 or step >= end_step:
        return 0
    decay = 0.5 * (1.0 + math.cos(math.pi * step / end_step))
    return max(0, min(pruned, kept, int(fraction * decay * kept)))


def swap(
    keep: torch.Tensor,
    drop_scores: torch.Tensor,
    grow_scores: torch.Tensor,
    count: int,
    require_better: bool,
) -> torch.Tensor:
    """Drop the `count` weakest kept groups and regrow the `count` best pruned groups.

    With `require_better` (DNS), a pair swaps only if the regrown group's score beats the
    dropped one's, so the swap never lowers the total importance.
    """
    if count <= 0:
        return keep
    kept_idx = keep.nonzero().flatten()
    pruned_idx = (~keep).nonzero().flatten()
    weakest = kept_idx[drop_scores[kept_idx].argsort(stable=True)[:count]]
    best = pruned_idx[grow_scores[pruned_idx].argsort(descending=True, stable=True)[:count]]
    if require_better:
        better = grow_scores[best] > drop_scores[weakest]
        weakest, best = weakest[better], best[better]
    out = keep.clone()
    out[weakest] = False
    out[best] = True
    return out


class Shadows:
    """DNS shadow weights: the value each pruned weight would have if it were still training."""

    def __init__(self, params: Sequence[PrunableParam]) -> None:
        self.values = {p.name: torch.zeros_like(p.param, requires_grad=False) for p in params}

    @torch.no_grad()
    def step(
        self,
        params: dict[str, PrunableParam],
        pruned: dict[str, torch.Tensor],
        lr: float,
        adaptive: bool,
    ) -> None:
        """One step on the pruned positions with the (not yet masked) dense gradient.

        With an adaptive optimizer (Adam) kept weights move about `lr` per step whatever the
        gradient's scale, so shadows take a sign step of `lr`; with SGD a plain gradient step.
        """
        names = [n for n, p in params.items() if p.param.grad is not None]
        if not names:
            return
        grads = [params[n].param.grad for n in names]
        directions = torch._foreach_sign(grads) if adaptive else grads
        values, where = [self.values[n] for n in names], [pruned[n] for n in names]
        torch._foreach_addcmul_(values, directions, where, value=-lr)

    @torch.no_grad()
    def effective(
        self, params: dict[str, PrunableParam], pruned: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Kept weights as they are, pruned ones at their shadow value (for scoring); pruned
        weights are exactly zero, so this is w + shadow * pruned, fused over the layers."""
        names = list(params)
        weights = [params[n].param for n in names]
        shadows, where = [self.values[n] for n in names], [pruned[n] for n in names]
        return dict(zip(names, torch._foreach_addcmul(weights, shadows, where), strict=True))

    @torch.no_grad()
    def remember(self, name: str, weight: torch.Tensor, newly_pruned: torch.Tensor) -> None:
        """A weight that is being pruned starts its shadow life at its current value."""
        self.values[name][newly_pruned] = weight[newly_pruned]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.values.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name, value in state.items():
            if name in self.values:
                self.values[name].copy_(value)
