"""Boolean masks that keep pruned weights at exactly zero, and the optimizer state they need.

Masks live here (in the callback's state), never on the model: the model's `state_dict` keeps
its plain keys, so a pruned checkpoint loads into the unpruned architecture without this package.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from lightning_prune.pruning.selection import PrunableParam

FIRST_MOMENTS = ("exp_avg", "momentum_buffer")  # what moves a weight without a gradient
SECOND_MOMENTS = ("exp_avg_sq", "max_exp_avg_sq")
# Second moment of a pruned weight: any positive value keeps its Adam update exactly zero (the
# first moment and the gradient are zero); 0 would make Adam's sqrt several times slower on CPU.
INERT_SECOND_MOMENT = 1.0


class MaskStore:
    """Boolean keep-masks per parameter name, with cached float copies for the hot path."""

    def __init__(self, params: Sequence[PrunableParam]) -> None:
        self.params = {p.name: p for p in params}
        self.param_list = list(params)
        self._weights = [p.param for p in self.param_list]  # for the fused hot-path ops
        self.masks: dict[str, torch.Tensor] = {
            p.name: torch.ones_like(p.param, dtype=torch.bool) for p in params
        }
        self._float: dict[str, torch.Tensor] = {}
        self.pruned_float: dict[str, torch.Tensor] = {}  # 1 where pruned (DNS shadow updates)
        # weights the granularity never prunes (granularity "heads": all but attention); left
        # out of kept/total/sparsity, so sparsity is measured where the target applies
        self.dense: frozenset[str] = frozenset()
        self._refresh_float()

    def _refresh_float(self) -> None:
        self._float = {
            n: m.to(dtype=self.params[n].param.dtype, device=self.params[n].param.device)
            for n, m in self.masks.items()
        }
        self.pruned_float = {n: 1.0 - m for n, m in self._float.items()}
        self._float_list = [self._float[p.name] for p in self.param_list]  # parallel to _weights
        # the hot path skips weights with nothing pruned (all of them before the ramp starts)
        pruned = [not bool(self.masks[p.name].all()) for p in self.param_list]
        self._hot_weights = [w for w, keep in zip(self._weights, pruned, strict=True) if keep]
        self._hot_masks = [m for m, keep in zip(self._float_list, pruned, strict=True) if keep]

    def float_masks(self) -> dict[str, torch.Tensor]:
        """1.0 where kept, 0.0 where pruned, in each weight's dtype and device."""
        return dict(self._float)

    def set_masks(self, masks: dict[str, torch.Tensor]) -> None:
        """Replace masks (same names and shapes) and refresh the cached float copies."""
        for name, mask in masks.items():
            if name not in self.masks or mask.shape != self.masks[name].shape:
                raise ValueError(f"AdaptivePruning: mask {name!r} does not match the model")
            self.masks[name] = mask.to(dtype=torch.bool, device=self.params[name].param.device)
        self._refresh_float()

    @torch.no_grad()
    def apply_to_weights(self) -> None:
        """Zero every pruned weight in place (exact zeros)."""
        if self._hot_weights:
            torch._foreach_mul_(self._hot_weights, self._hot_masks)

    @torch.no_grad()
    def mask_grads(self) -> None:
        """Zero the gradient of every pruned weight so the optimizer does not move it."""
        pairs = [(w.grad, m) for w, m in zip(self._hot_weights, self._hot_masks, strict=True)]
        pairs = [(g, m) for g, m in pairs if g is not None]
        if pairs:
            torch._foreach_mul_([g for g, _ in pairs], [m for _, m in pairs])

    def density(self, name: str) -> float:
        mask = self.masks[name]
        return float(mask.sum()) / max(1, mask.numel())

    def kept(self) -> int:
        return int(sum(int(m.sum()) for n, m in self.masks.items() if n not in self.dense))

    def total(self) -> int:
        return int(sum(m.numel() for n, m in self.masks.items() if n not in self.dense))

    def sparsity(self) -> float:
        total = self.total()
        return 1.0 - self.kept() / total if total else 0.0

    def to(self, device: torch.device) -> None:
        self.masks = {n: m.to(device) for n, m in self.masks.items()}
        self._refresh_float()


@torch.no_grad()
def reset_optimizer_state(
    optimizers: Iterable[torch.optim.Optimizer],
    params: dict[str, PrunableParam],
    masks: dict[str, torch.Tensor],
    changed: dict[str, torch.Tensor] | None = None,
) -> bool:
    """Fresh optimizer state where a weight was just pruned or regrown (`changed`).

    First moments (Adam `exp_avg`, SGD momentum) become 0 there: a stale one would keep moving a
    pruned weight, or push a regrown one. Second moments become 0 at regrown weights (Adam's
    own start, so they are not frozen by a large stale value) and `INERT_SECOND_MOMENT` at
    every pruned weight, which also renews it before its decay reaches subnormal floats.
    Returns False when some parameter has no optimizer state yet (reset it again later).
    """
    complete = True
    by_tensor = {id(p.param): name for name, p in params.items()}
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            for p in group["params"]:
                name = by_tensor.get(id(p))
                if name is None:
                    continue
                if p not in optimizer.state:
                    complete = False
                    continue
                state = optimizer.state[p]
                pruned = ~masks[name].to(p.device)
                where = changed[name].to(p.device) if changed and name in changed else None
                for key in FIRST_MOMENTS + SECOND_MOMENTS:
                    value = state.get(key)
                    if not isinstance(value, torch.Tensor) or value.shape != pruned.shape:
                        continue
                    if where is not None:
                        value.masked_fill_(where, 0)
                    if key in SECOND_MOMENTS:
                        value.masked_fill_(pruned, INERT_SECOND_MOMENT)
    return complete
