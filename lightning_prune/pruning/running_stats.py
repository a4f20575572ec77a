"""Running means of gradient, Taylor and activation statistics that some criteria need.

Only the statistics a criterion asks for are collected, so magnitude pruning adds no per-step cost;
the callback gathers gradient statistics only in the `window` steps before each mask update.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lightning_prune.pruning.selection import CONV_TYPES, TRANSPOSED_TYPES, PrunableParam

STATISTICS = ("grad", "taylor", "activation")


class RunningStats:
    """Exponential running means, keyed by parameter name.

    - `grad[name]`: mean |g| per weight (dense gradient, before masking)
    - `taylor[name]`: mean |w * g| per weight (first-order Taylor, Molchanov et al. 2017)
    - `act_mean[name]` / `act_positive[name]`: mean |output| and fraction of positive outputs
      (1 - APoZ) per output neuron/channel, from forward hooks during training
    """

    def __init__(self, required: frozenset[str], momentum: float = 0.9, stride: int = 1) -> None:
        """`momentum` per training step; gradients observed every `stride` steps get the
        matching per-observation momentum, so the memory in steps stays the same."""
        unknown = set(required) - set(STATISTICS)
        if unknown:
            raise ValueError(f"unknown statistics {sorted(unknown)}; allowed: {STATISTICS}")
        self.required = frozenset(required)
        self.momentum = momentum
        self.grad_momentum = momentum**stride
        # steps that carry 88 % of the running mean's weight (20 for momentum 0.9)
        self.window = max(1, round(2.0 / (1.0 - momentum)))
        self.grad: dict[str, torch.Tensor] = {}
        self.taylor: dict[str, torch.Tensor] = {}
        self.act_mean: dict[str, torch.Tensor] = {}
        self.act_positive: dict[str, torch.Tensor] = {}
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []

    def _ema(
        self, store: dict[str, torch.Tensor], name: str, value: torch.Tensor, momentum: float
    ) -> None:
        old = store.get(name)
        if old is None or old.shape != value.shape:
            store[name] = value.detach().clone()
        else:
            old.mul_(momentum).add_(value.detach(), alpha=1.0 - momentum)

    @torch.no_grad()
    def observe_grads(
        self, params: Sequence[PrunableParam], weights: dict[str, torch.Tensor] | None = None
    ) -> None:
        """Update gradient/Taylor means; call before gradients are masked (fused over layers).

        `weights` replaces the parameters in |w * g|: with DNS, pruned positions hold their
        shadow value, so a pruned weight's Taylor score says what splicing it back would give.
        """
        if not self.required & {"grad", "taylor"}:
            return
        params = [p for p in params if p.param.grad is not None]
        grads = [p.param.grad for p in params]
        if "grad" in self.required:
            self._ema_all(self.grad, params, torch._foreach_abs(grads))
        if "taylor" in self.required:
            values = [p.param if weights is None else weights[p.name] for p in params]
            taylor = torch._foreach_mul(grads, values)
            torch._foreach_abs_(taylor)
            self._ema_all(self.taylor, params, taylor)

    def _ema_all(self, store: dict[str, torch.Tensor], params, values: list[torch.Tensor]):
        old = [store.get(p.name) for p in params]
        if any(o is None or o.shape != v.shape for o, v in zip(old, values, strict=True)):
            for p, value in zip(params, values, strict=True):
                self._ema(store, p.name, value, self.grad_momentum)
            return
        torch._foreach_lerp_(old, values, 1.0 - self.grad_momentum)

    def attach(self, params: Sequence[PrunableParam]) -> None:
        """Register forward hooks for activation statistics (only if a criterion needs them)."""
        self.detach()
        if "activation" not in self.required:
            return
        for p in params:
            channels_first = isinstance(p.module, CONV_TYPES + TRANSPOSED_TYPES)
            hook = self._make_hook(p.name, channels_first)
            self._hooks.append(p.module.register_forward_hook(hook))

    def _make_hook(self, name: str, channels_first: bool):
        def hook(module: nn.Module, inputs, output: torch.Tensor) -> None:
            if not module.training or not isinstance(output, torch.Tensor):
                return
            with torch.no_grad():
                out = output.detach()
                unit_dim = 1 if channels_first and out.dim() > 2 else out.dim() - 1
                dims = [d for d in range(out.dim()) if d != unit_dim]
                self._ema(self.act_mean, name, out.abs().mean(dim=dims), self.momentum)
                self._ema(self.act_positive, name, (out > 0).float().mean(dim=dims), self.momentum)

        return hook

    def detach(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        return {
            "grad": {k: v.cpu() for k, v in self.grad.items()},
            "taylor": {k: v.cpu() for k, v in self.taylor.items()},
            "act_mean": {k: v.cpu() for k, v in self.act_mean.items()},
            "act_positive": {k: v.cpu() for k, v in self.act_positive.items()},
        }

    def load_state_dict(self, state: dict, device: torch.device | None = None) -> None:
        for key in ("grad", "taylor", "act_mean", "act_positive"):
            setattr(self, key, {k: v.to(device) for k, v in state.get(key, {}).items()})
