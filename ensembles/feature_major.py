"""Runs of matmul layers kept in feature-major layout ([features, N]) between their ends.

A CSR weight multiplies from the left (W @ x^T), so each `SparseLinear` on its own turns its
input and output around; on a chain of Linears that is two copies per layer, which on the
side-by-side ensemble cost as much as the sparse matmuls themselves. Here the input turns
once, every Linear (CSR, dense or member-batched) and element-wise activation runs on
[features, N], and the output turns once at the end: the same values, fewer copies.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from lightning_prune.ensembles.fast_layers import _ACTIVATIONS, BatchedLinear, SparseLinear
from torch import nn

_MATMULS = (SparseLinear, nn.Linear, BatchedLinear)


class FeatureMajorChain(nn.Module):
    """Linears and activations on [features, N]; takes and gives [N, features]."""

    def __init__(self, layers: Sequence[nn.Module]) -> None:
        super().__init__()
        self.activations = nn.ModuleDict()  # the matmuls live on as buffers only
        self._kinds: list[str] = []
        for i, layer in enumerate(layers):  # weights as buffers: `.to()` moves them
            if isinstance(layer, SparseLinear):
                kind, weight, bias = "csr", layer.weight, layer.bias
            elif isinstance(layer, nn.Linear):
                kind, weight = "dense", layer.weight.detach()
                bias = weight.new_zeros(weight.shape[0]) if layer.bias is None else layer.bias
                bias = bias.detach().view(-1, 1)
            elif isinstance(layer, BatchedLinear):  # weight [M, F, O] -> [M, O, F]
                kind, weight = "batched", layer.weight.transpose(1, 2).contiguous()
                bias = layer.bias.transpose(1, 2).contiguous()
            else:
                self._kinds.append("act")
                self.activations[str(i)] = layer
                continue
            self._kinds.append(kind)
            self.register_buffer(f"weight_{i}", weight)
            self.register_buffer(f"bias_{i}", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.reshape(x.shape[0], -1).t()  # [F, N]
        for i, kind in enumerate(self._kinds):
            if kind == "act":
                h = self.activations[str(i)](h)
                continue
            weight, bias = getattr(self, f"weight_{i}"), getattr(self, f"bias_{i}")
            if kind == "batched":
                members, outputs, features = weight.shape
                per_member = h.reshape(members, features, h.shape[1])
                h = torch.baddbmm(bias, weight, per_member).reshape(members * outputs, -1)
            elif h.shape[1] == 1:  # matrix-vector: faster than a one-column matmul
                h = torch.addmv(bias[:, 0], weight, h[:, 0]).unsqueeze(1)
            else:
                h = torch.addmm(bias, weight, h)
        return h.t()


def fuse_feature_major(net: nn.Sequential) -> nn.Sequential | None:
    """`net` with its first run of matmul layers (and activations between them) replaced
    by one `FeatureMajorChain`, or None where that run holds fewer than two."""
    modules = list(net)
    matmuls = [i for i, m in enumerate(modules) if isinstance(m, _MATMULS)]
    if len(matmuls) < 2:
        return None
    first = matmuls[0]
    last = first
    for i in range(first + 1, len(modules)):
        module = modules[i]
        if isinstance(module, _MATMULS):
            last = i
        elif not isinstance(module, _ACTIVATIONS):
            break
    if sum(isinstance(m, _MATMULS) for m in modules[first : last + 1]) < 2:
        return None
    chain = FeatureMajorChain(modules[first : last + 1])
    return nn.Sequential(*modules[:first], chain, *modules[last + 1 :])
