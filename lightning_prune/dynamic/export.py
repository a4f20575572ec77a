"""ONNX export of a gated model (`DynamicGating`), verified against torch outputs.

The exported graph computes every channel of every gated layer and multiplies the dropped
ones by zero: ONNX has no per-input "run only these channels", so the file gives the gated
model's outputs but none of its savings. Work is skipped only by the batch-1 path in
`lightning_prune.dynamic.skipping`. The budget is fixed at export time (k of each top-k is a
constant of the graph).
"""

from __future__ import annotations

import copy
import types
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lightning_prune.dynamic.gates import ChannelGate, gated_layers
from lightning_prune.export.onnx_export import export_onnx


def _matrix_pool(gate: ChannelGate, x: torch.Tensor) -> torch.Tensor:
    """The gate's pooling as one matmul: ONNX cannot express `adaptive_avg_pool1d` when the
    bins do not divide the input width; `pool_matrix` holds the same averaging weights."""
    if x.dim() == 4:
        return x.mean(dim=(2, 3))
    return x @ gate.pool_matrix


def exportable(model: nn.Module) -> nn.Module:
    """A copy of the gated `model` in eval mode whose gates ONNX can trace (same outputs)."""
    if not gated_layers(model):
        raise ValueError("the model has no gates: attach them with DynamicGating first")
    copied = copy.deepcopy(model).eval().cpu()
    for item in gated_layers(copied):
        gate = item.gate
        if gate.bins is None:
            continue
        width = item.layer.in_features
        eye = torch.eye(width, dtype=gate.weight.dtype).unsqueeze(1)
        gate.register_buffer("pool_matrix", F.adaptive_avg_pool1d(eye, gate.bins).squeeze(1))
        gate.pool = types.MethodType(_matrix_pool, gate)
    return copied


def export_gated_onnx(
    model: nn.Module,
    path: str | Path,
    example_input: torch.Tensor,
    **options,
) -> Path:
    """Export a gated model to ONNX at `path`, checked with onnx.checker and compared with
    torch on `example_input` by onnxruntime (`options` go to `lightning_prune.export.
    export_onnx`: opset_version, dynamic_batch, verify, rtol, atol).

    The graph computes all channels and multiplies the dropped ones by zero: it cannot skip
    work, so its latency is the dense model's plus the gates'.
    """
    with warnings.catch_warnings():  # k of each top-k becomes a constant, as intended
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return export_onnx(exportable(model), path, example_input, **options)
