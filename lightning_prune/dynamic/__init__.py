"""Input-dependent (dynamic) pruning: per-input channel gates, trained in a Lightning callback,
and a batch-1 inference path that runs only the kept channels and counts the MACs that ran."""

from lightning_prune.dynamic.callback import DynamicGating
from lightning_prune.dynamic.gates import (
    ChannelGate,
    GatedLayer,
    GatingError,
    attach_gates,
    gated_layers,
    set_budget,
)
from lightning_prune.dynamic.grouped import GroupedSkippingPath, gated_forward_grouped
from lightning_prune.dynamic.skipping import (
    MacCount,
    SkippingPath,
    dense_macs,
    gated_forward_batch1,
)

__all__ = [
    "ChannelGate",
    "DynamicGating",
    "GatedLayer",
    "GatingError",
    "GroupedSkippingPath",
    "MacCount",
    "SkippingPath",
    "attach_gates",
    "dense_macs",
    "gated_forward_batch1",
    "gated_forward_grouped",
    "gated_layers",
    "set_budget",
]
