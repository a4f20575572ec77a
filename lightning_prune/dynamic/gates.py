"""Per-input channel gates in the spirit of Feature Boosting and Suppression (Gao et al. 2019).

A gate predicts a saliency per output channel of one Conv2d/Linear from its pooled input and
keeps the top-k channels: output = layer(x) * (mask * saliency). Gates are plain modules (not
nn.Linear), so `AdaptivePruning` never selects their weights; each lives inside its layer as
`<layer>.dynamic_gate` (a child that a Conv2d/Linear forward never calls), so the gates are in
the model's state_dict, train with its optimizer, and work in a bare nn.Sequential.

Which layers may be gated (the chain rule): the layer is a direct child of an nn.Sequential and,
inside that Sequential, its output (or the output of the BatchNorm right after it) reaches the
next Conv2d/Linear through zero-preserving per-channel modules only (activations with f(0) = 0,
pooling, dropout, Flatten). Then a dropped channel is exactly zero where the next layer reads it,
and nothing else (a residual sum, a second consumer) ever sees the gated channels. A layer that
is last in its Sequential, or whose Sequential is not its parent, is refused.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

GATE_ATTR = "dynamic_gate"
ZERO_PRESERVING = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.ELU, nn.Hardswish,
    nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
    nn.Dropout, nn.Dropout2d, nn.Identity, nn.Flatten,
)  # fmt: skip
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


class GatingError(ValueError):
    """A DynamicGating option or a layer choice that cannot work; raised before training."""


GATE_MODES = ("topk", "threshold")


class ChannelGate(nn.Module):
    """Saliency = relu(W @ pool(x) + b) over the output channels of one layer; keeps some.

    `mode` "topk" keeps the top ceil(budget * channels) of every input (the same cost for
    every input, as FBS). "threshold" keeps, in training, the top budget share of all
    (input, channel) saliencies of the batch, and tracks that batch cut-off in the buffer
    `threshold` (a running mean, as BatchNorm tracks statistics); in eval it keeps every
    channel above it. Then inputs whose saliencies are spread thin run fewer channels and the
    budget holds on average, not per input. Conv inputs are pooled over space; Linear inputs
    wider than `bins` are average-pooled into `bins` features (the gate stays cheap).
    """

    def __init__(
        self, in_features: int, channels: int, bins: int | None, budget: float, mode: str = "topk"
    ) -> None:
        super().__init__()
        if mode not in GATE_MODES:
            raise GatingError(f"DynamicGating gate must be one of {GATE_MODES}, got {mode!r}")
        self.weight = nn.Parameter(torch.randn(channels, in_features) * 0.01)
        # bias 1: every saliency starts near 1, so the gated model starts as the dense one
        self.bias = nn.Parameter(torch.ones(channels))
        self.register_buffer("budget", torch.tensor(float(budget)))
        if mode == "threshold":
            self.register_buffer("threshold", torch.tensor(0.0))
            self.register_buffer("calibrated", torch.tensor(False))
        self.channels, self.bins, self.mode = channels, bins, mode
        self.momentum = 0.1
        self.enabled = True
        self.external = False  # the batch-1 paths compute the scale themselves
        self.layer_name = ""  # set by `attach_gates`, for error messages
        self._scale: torch.Tensor | None = None

    def keep_count(self) -> int:
        return min(self.channels, max(1, math.ceil(round(float(self.budget) * self.channels, 4))))

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            return x.mean(dim=(2, 3))
        if x.dim() != 2:
            raise GatingError(
                f"DynamicGating: the gated Linear {self.layer_name!r} got {x.dim()}-D input "
                f"{tuple(x.shape)}; a gate decides per example, so a gated Linear needs 2-D "
                "input (batch, features), e.g. not a token-wise layer. Leave it out: "
                "DynamicGating(include=[...]) naming the layers to gate."
            )
        if self.bins is None:
            return x
        return F.adaptive_avg_pool1d(x.unsqueeze(1), self.bins).squeeze(1)

    def saliency(self, pooled: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        return F.relu(F.linear(pooled, self.weight if weight is None else weight, self.bias))

    def _threshold_mask(self, saliency: torch.Tensor) -> torch.Tensor:
        if self.training:
            count = max(1, round(float(self.budget) * saliency.numel()))
            cut = saliency.detach().flatten().topk(count, sorted=False).values.min()
            with torch.no_grad():
                if bool(self.calibrated):
                    self.threshold.lerp_(cut, self.momentum)
                else:
                    self.threshold.copy_(cut)
                    self.calibrated.fill_(True)
        else:
            cut = self.threshold
        mask = (saliency >= cut) & (saliency > 0)
        top = saliency.argmax(dim=1, keepdim=True)  # every input runs at least one channel
        return mask.scatter(1, top, torch.ones_like(top, dtype=torch.bool))

    def scale_and_mask(self, pooled: torch.Tensor, weight: torch.Tensor | None = None):
        """(mask * saliency, kept mask), both (batch, channels); the mask is None when every
        channel runs. Gradients reach the gate through the kept saliencies."""
        saliency = self.saliency(pooled, weight)
        if self.keep_count() == self.channels:
            return saliency, None
        if self.mode == "topk":
            kept = saliency.topk(self.keep_count(), dim=1, sorted=False).indices
            ones = torch.ones_like(kept, dtype=torch.bool)  # a tensor source: ONNX traces it
            mask = torch.zeros_like(saliency, dtype=torch.bool).scatter(1, kept, ones)
        else:
            mask = self._threshold_mask(saliency)
        return saliency * mask, mask

    def select(self, pooled: torch.Tensor, weight: torch.Tensor | None = None):
        """(saliency of the kept channels, their indices) per row, from a pooled input; with
        threshold gates rows keep different counts, so only one row at a time."""
        if self.mode == "topk" or self.keep_count() == self.channels:
            saliency = self.saliency(pooled, weight)
            if self.keep_count() == self.channels:
                return saliency, None
            top = saliency.topk(self.keep_count(), dim=1, sorted=False)
            return top.values, top.indices
        if pooled.shape[0] != 1:
            raise ValueError("threshold gates keep a different number of channels per input: "
                             "use scale_and_mask for several inputs")  # fmt: skip
        scale, mask = self.scale_and_mask(pooled, weight)
        kept = mask[0].nonzero().flatten().unsqueeze(0)
        return scale.gather(1, kept), kept

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """mask * saliency, shape (batch, channels)."""
        return self.scale_and_mask(self.pool(x))[0]

    def before_layer(self, module: nn.Module, args: tuple) -> None:
        if self.enabled and not self.external:
            self._scale = self.scale(args[0])

    def after_attach(self, module: nn.Module, args: tuple, output: torch.Tensor):
        if self._scale is None:
            return None
        scale, self._scale = self._scale, None
        return output * scale.view(*scale.shape, *([1] * (output.dim() - 2)))


@dataclass(frozen=True)
class GatedLayer:
    """One gated layer: where it sits, and where its scale is applied (itself or its norm)."""

    name: str
    layer: nn.Module
    attach: nn.Module
    gate: ChannelGate


def _gateable_type(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)


def chain_reason(parents: dict[str, nn.Module], name: str, module: nn.Module) -> str | None:
    """Why `name` breaks the chain rule (module docstring), or None when it may be gated."""
    parent_name, _, local = name.rpartition(".")
    parent = parents.get(parent_name)
    if not isinstance(parent, nn.Sequential):
        return (
            f"its parent {parent_name or '<root>'!r} is not an nn.Sequential, so its output may"
            " feed a residual sum or another consumer that needs all channels"
        )
    children = list(parent.children())
    position = [i for i, child in enumerate(children) if child is module][0]
    after = children[position + 1 :]
    if after and isinstance(after[0], NORMS):
        after = after[1:]
    for child in after:
        if _gateable_type(child) or isinstance(child, nn.Conv2d):
            if isinstance(child, nn.Conv2d) and child.groups != 1:
                return f"the next layer {type(child).__name__} is grouped"
            return None
        if not isinstance(child, ZERO_PRESERVING):
            return (
                f"it is followed by {type(child).__name__}, which is not a zero-preserving"
                " per-channel module, before the next layer"
            )
    return "its output reaches the end of its nn.Sequential (output layer or a residual sum)"


def find_layers(root: nn.Module, include: Sequence[str] | None) -> list[tuple[str, nn.Module]]:
    """The layers to gate: by default every layer passing the chain rule; with `include`, the
    Conv2d/Linear layers whose names match, each of which must pass it."""
    modules = dict(root.named_modules())
    candidates = [(name, m) for name, m in modules.items() if name and _gateable_type(m)]
    if include is None:
        chosen = [(n, m) for n, m in candidates if chain_reason(modules, n, m) is None]
        if not chosen:
            raise GatingError(
                "DynamicGating found no gateable layer: it needs a Conv2d/Linear inside an"
                " nn.Sequential whose output feeds the next Conv2d/Linear of that Sequential"
            )
        return chosen
    chosen = []
    for pattern in include:
        matched = [(n, m) for n, m in candidates if fnmatch.fnmatchcase(n, pattern)]
        if not matched:
            names = [n for n, _ in candidates]
            raise GatingError(
                f"DynamicGating include pattern {pattern!r} matches no Conv2d/Linear layer;"
                f" layers: {names}"
            )
        chosen += [item for item in matched if item not in chosen]
    for name, module in chosen:
        reason = chain_reason(modules, name, module)
        if reason is not None:
            raise GatingError(f"DynamicGating cannot gate layer {name!r}: {reason}")
    return chosen


def attach_gates(
    root: nn.Module,
    include: Sequence[str] | None = None,
    budget: float = 1.0,
    bins: int = 32,
    mode: str = "topk",
) -> list[GatedLayer]:
    """Gate the chosen layers of `root` (idempotent): each gate goes to `layer.dynamic_gate`."""
    existing = gated_layers(root)
    if existing:
        return existing
    for name, layer in find_layers(root, include):
        if isinstance(layer, nn.Conv2d):
            gate = ChannelGate(layer.in_channels, layer.out_channels, None, budget, mode)
        else:
            pooled = None if layer.in_features <= bins else bins
            width = pooled or layer.in_features
            gate = ChannelGate(width, layer.out_features, pooled, budget, mode)
        gate.layer_name = name
        layer.add_module(GATE_ATTR, gate.to(layer.weight.device))
    layers = gated_layers(root)
    for item in layers:
        item.layer.register_forward_pre_hook(item.gate.before_layer)
        item.attach.register_forward_hook(item.gate.after_attach)
    return layers


def gated_layers(root: nn.Module) -> list[GatedLayer]:
    """The gated layers of `root`, in module order (empty when it has no gates)."""
    modules = dict(root.named_modules())
    layers = []
    for name, layer in modules.items():
        gate = getattr(layer, GATE_ATTR, None)
        if not isinstance(gate, ChannelGate) or not _gateable_type(layer):
            continue
        parent_name, _, _ = name.rpartition(".")
        children = list(modules[parent_name].children())
        position = [i for i, child in enumerate(children) if child is layer][0]
        following = children[position + 1] if position + 1 < len(children) else None
        attach = following if isinstance(following, NORMS) else layer
        layers.append(GatedLayer(name, layer, attach, gate))
    return layers


def set_budget(root: nn.Module, budget: float) -> None:
    """Set the kept fraction of every gate of `root` (1.0 runs all channels)."""
    for item in gated_layers(root):
        item.gate.budget.fill_(float(budget))
