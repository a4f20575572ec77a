"""What the gates did on real inputs: the MACs each input executed (counted by the batch-1
skipping path, `SkippingPath`), their mean per class, and how often each channel was gated off.

This is what makes the adaptivity visible: the callback logs the mean while it trains, and a
`train` run records the per-class means and the most-often-dropped channels in MLflow.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lightning_prune.dynamic.gates import gated_layers
from lightning_prune.dynamic.skipping import SkippingPath


@dataclass
class GateUsage:
    """Executed MACs fraction per input (gate MACs included), its label when known, and per
    gated layer how many inputs had each output channel gated off."""

    fractions: list[float] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    off: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def samples(self) -> int:
        return len(self.fractions)

    @property
    def mean_fraction(self) -> float:
        return sum(self.fractions) / len(self.fractions) if self.fractions else float("nan")

    def per_class(self) -> dict[int, float]:
        """Mean executed MACs fraction per label (empty when labels were not known)."""
        if len(self.labels) != len(self.fractions):
            return {}
        sums: dict[int, list[float]] = {}
        for label, fraction in zip(self.labels, self.fractions, strict=True):
            sums.setdefault(label, []).append(fraction)
        return {label: sum(v) / len(v) for label, v in sorted(sums.items())}

    def most_off(self, top: int = 10) -> dict[str, list[dict[str, Any]]]:
        """Per layer, the `top` channels gated off on the most inputs, with that share."""
        seen = max(self.samples, 1)
        out = {}
        for name, counts in self.off.items():
            order = torch.argsort(counts, descending=True, stable=True)[:top]
            out[name] = [
                {"channel": int(c), "off_fraction": round(float(counts[c]) / seen, 4)}
                for c in order
            ]
        return out

    def summary(self, top: int = 10) -> dict[str, Any]:
        """Plain types only (a JSON artifact, a checkpoint's info)."""
        return {
            "samples": self.samples,
            "macs_fraction": self.mean_fraction,
            "macs_fraction_per_class": {str(k): v for k, v in self.per_class().items()},
            "channels": {name: int(counts.numel()) for name, counts in self.off.items()},
            "most_off": self.most_off(top),
        }


def _split(batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Inputs and integer labels of a batch ((x, y), [x, y, ...] or x alone)."""
    if isinstance(batch, torch.Tensor):
        return batch, None
    x = batch[0]
    y = batch[1] if len(batch) > 1 else None
    ok = isinstance(y, torch.Tensor) and y.dim() == 1 and not y.is_floating_point()
    return x, y if ok and len(y) == len(x) else None


def find_chain(model: nn.Module, x: torch.Tensor) -> nn.Sequential | None:
    """The nn.Sequential computing `model`'s whole output (itself, or a child such as a
    Classifier's `net`), checked on `x`; None leaves the skipping path's per-layer fallback."""
    candidates = [model] if isinstance(model, nn.Sequential) else []
    candidates += [c for c in model.children() if isinstance(c, nn.Sequential)]
    layers = [item.layer for item in gated_layers(model)]
    for chain in candidates:
        if not all(any(layer is m for m in chain) for layer in layers):
            continue
        with torch.no_grad():
            same = torch.allclose(chain(x), model(x), atol=1e-6)
        if same:
            return chain
    return None


class UsageMeter:
    """Accumulates `GateUsage` batch by batch, up to `max_samples` inputs (None: all).

    The model must be in eval mode. Each input runs once through `SkippingPath` (the MACs
    that ran) and once through the model's own forward (which channels each gate dropped).
    """

    def __init__(self, model: nn.Module, max_samples: int | None = None) -> None:
        self.model, self.max_samples = model, max_samples
        self.usage = GateUsage()
        self.path: SkippingPath | None = None
        self.layers = gated_layers(model)
        for item in self.layers:
            self.usage.off[item.name] = torch.zeros(item.gate.channels, dtype=torch.long)

    @property
    def full(self) -> bool:
        return self.max_samples is not None and self.usage.samples >= self.max_samples

    def _count_off(self, x: torch.Tensor) -> None:
        def watch(item):
            def hook(module, args):
                gate = item.gate
                _, mask = gate.scale_and_mask(gate.pool(args[0]))
                if mask is not None:
                    self.usage.off[item.name] += (~mask).sum(0).cpu()

            return hook

        handles = [item.layer.register_forward_pre_hook(watch(item)) for item in self.layers]
        try:
            self.model(x)
        finally:
            for handle in handles:
                handle.remove()

    @torch.no_grad()
    def add(self, batch: Any) -> None:
        """Measure the inputs of one batch (those that fit under `max_samples`)."""
        if self.full:
            return
        x, y = _split(batch)
        room = len(x) if self.max_samples is None else self.max_samples - self.usage.samples
        x, y = x[:room], None if y is None else y[:room]
        if self.path is None:
            self.path = SkippingPath(self.model, find_chain(self.model, x[:2]))
        self._count_off(x)
        for i in range(len(x)):
            _, ran = self.path(x[i : i + 1])
            self.usage.fractions.append(ran.fraction)
        if y is not None:
            self.usage.labels += [int(v) for v in y]


def measure_usage(
    model: nn.Module, batches: Iterable[Any], max_samples: int | None = None
) -> GateUsage:
    """`GateUsage` of a gated model (put in eval mode) over `batches` (e.g. a val loader)."""
    model.eval()
    device = next(model.parameters()).device
    meter = UsageMeter(model, max_samples)
    for batch in batches:
        if meter.full:
            break
        x, y = _split(batch)
        meter.add(x.to(device) if y is None else (x.to(device), y))
    return meter.usage
