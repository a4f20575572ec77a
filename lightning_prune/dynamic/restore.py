"""Gates back onto a freshly built model from a saved state_dict alone.

A file saved from a gated model (`lightning-prune train dynamic=gated`, an ensemble file) holds
`<layer>.dynamic_gate.*` tensors but no callback: the layer names and the gates' shapes say
where the gates were and how wide each reads (its `bins`), so a loader can attach the same
gates before `load_state_dict` (which then restores their weights and budget).
"""

from __future__ import annotations

import glob
from collections.abc import Mapping

import torch
from torch import nn

from lightning_prune.dynamic.gates import GATE_ATTR, GatedLayer, GatingError, attach_gates

SUFFIX = f".{GATE_ATTR}.weight"


def gate_names(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the gated layers in a saved state_dict, in its order."""
    return [key[: -len(SUFFIX)] for key in state_dict if key.endswith(SUFFIX)]


def _bins(model: nn.Module, state_dict: Mapping[str, torch.Tensor], names: list[str]) -> int:
    """The `bins` the gates were built with: the width of a pooled Linear gate, else any
    width at least every gated Linear's input (then none is pooled, as saved)."""
    modules = dict(model.named_modules())
    pooled, widths = set(), [1]
    for name in names:
        layer, width = modules.get(name), state_dict[name + SUFFIX].shape[1]
        if isinstance(layer, nn.Linear):
            widths.append(layer.in_features)
            if width != layer.in_features:
                pooled.add(width)
    if len(pooled) > 1:
        raise GatingError(f"the saved gates were pooled to different widths {sorted(pooled)}")
    return pooled.pop() if pooled else max(widths)


def restore_gates(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> list[GatedLayer]:
    """Attach to `model` the gates a saved `state_dict` holds (none: nothing changes); call it
    before `model.load_state_dict(state_dict)`. A layer the model lacks raises GatingError."""
    names = gate_names(state_dict)
    if not names:
        return []
    missing = [name for name in names if name not in dict(model.named_modules())]
    if missing:
        raise GatingError(f"the saved gates name layers this model lacks: {missing}")
    exact = [glob.escape(name) for name in names]  # names, not patterns
    mode = "threshold" if f"{names[0]}.{GATE_ATTR}.threshold" in state_dict else "topk"
    bins = _bins(model, state_dict, names)
    return attach_gates(model, exact, budget=1.0, bins=bins, mode=mode)
