"""Building blocks of the fast ensemble: sparse and member-batched layers, and one network
that runs every member's layer of a depth in one op.

Members that share a layer plan (same layer types and settings, possibly different widths
after compaction) are laid side by side: activations hold all members, member-major along
features or channels, each member zero-padded to the widest at that depth. Padding is exact:
a padded unit has zero weights and bias, and the next layer reads it with zero weights.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# layers that act per element or per channel, so they run on the side-by-side layout as is
_ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid)
_POOLS = (nn.MaxPool2d, nn.AvgPool2d)
_NO_OPS = (nn.Dropout, nn.Identity)  # identity in eval mode
_CONV_SETTINGS = ("kernel_size", "stride", "padding", "dilation", "padding_mode")


class SparseLinear(nn.Module):
    """A Linear whose weight is a CSR matrix: the cost follows its nonzeros, not its shape."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        weight = weight.detach()
        bias = weight.new_zeros(weight.shape[0]) if bias is None else bias.detach()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            self.register_buffer("weight", weight.to_sparse_csr())
        self.register_buffer("bias", bias.reshape(-1, 1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if flat.shape[0] == 1:  # matrix-vector: half the time of a one-column addmm
            out = torch.addmv(self.bias[:, 0], self.weight, flat[0])
        else:
            out = torch.addmm(self.bias, self.weight, flat.t()).t()  # (W x^T)^T: CSR on the left
        return out.reshape(*x.shape[:-1], self.out_features)


class BatchedLinear(nn.Module):
    """M independent Linears on a member-major [N, M*F] input: one batched matmul."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight.detach().transpose(1, 2).contiguous())  # [M, F, O]
        self.register_buffer("bias", bias.detach().unsqueeze(1).clone())  # [M, 1, O]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        members, features, outputs = self.weight.shape
        per_member = x.reshape(-1, members, features).transpose(0, 1)  # [M, N, F]
        out = torch.matmul(per_member, self.weight) + self.bias  # [M, N, O]
        return out.transpose(0, 1).reshape(-1, members * outputs)


class SlicedMaxPool(nn.Module):
    """MaxPool2d with kernel == stride, no padding, as element-wise maxima of strided slices:
    the same values, several times faster than torch's NCHW max_pool2d on CPU."""

    def __init__(self, kernel: int) -> None:
        super().__init__()
        self.kernel = kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel
        h, w = x.shape[-2] // k * k, x.shape[-1] // k * k
        rows = x[..., 0:h:k, :]
        for i in range(1, k):
            rows = torch.maximum(rows, x[..., i:h:k, :])
        out = rows[..., 0:w:k]
        for j in range(1, k):
            out = torch.maximum(out, rows[..., j:w:k])
        return out


class ChannelsLastConv(nn.Module):
    """A Conv2d run in channels-last memory format (often faster on CPU); same values."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = copy.deepcopy(conv).to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.contiguous(memory_format=torch.channels_last))


def _square(value) -> int | None:
    values = set(value) if isinstance(value, tuple) else {value}
    return values.pop() if len(values) == 1 else None


def candidates(module: nn.Module) -> dict[str, nn.Module]:
    """Equivalent ways to run one layer, by name: to be measured (see `EXPORTABLE`)."""
    if isinstance(module, nn.Linear) and module.weight.dtype == torch.float32:
        return {"dense": module, "csr": SparseLinear(module.weight, module.bias)}
    if isinstance(module, nn.Conv2d) and module.weight.dtype == torch.float32:
        return {"conv": module, "conv_cl": ChannelsLastConv(module)}
    if isinstance(module, nn.MaxPool2d):
        kernel, stride = _square(module.kernel_size), _square(module.stride or module.kernel_size)
        plain = _square(module.padding) == 0 and _square(module.dilation) == 1
        if plain and kernel == stride and not module.ceil_mode and not module.return_indices:
            return {"pool": module, "sliced": SlicedMaxPool(kernel)}
    return {"shared": module}


# candidates an ONNX graph can hold with the operators onnxruntime runs fastest
EXPORTABLE = ("dense", "batched", "conv", "pool", "shared")


class ByBatch(nn.Module):
    """Equivalent modules, each measured fastest at one batch size: a batch runs on the one
    measured at the nearest size (geometric midpoints between the sizes)."""

    def __init__(self, modules: Sequence[nn.Module], sizes: Sequence[int]) -> None:
        super().__init__()
        self.choices = nn.ModuleList(modules)
        self.sizes = list(sizes)
        self.bounds = [math.sqrt(a * b) for a, b in zip(sizes, sizes[1:], strict=False)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        for bound, module in zip(self.bounds, self.choices, strict=False):
            if n < bound:
                return module(x)
        return self.choices[-1](x)


def by_batch(modules: Sequence[nn.Module], sizes: Sequence[int]) -> nn.Module:
    """The one module when every size chose it, else a `ByBatch` over the choices."""
    if all(m is modules[0] for m in modules):
        return modules[0]
    return ByBatch(modules, sizes)


class Combine(nn.Module):
    """Weighted combination of members' log-probabilities [N, M, C], as `combine_log_probs`
    does. With `graph`, log-sum-exp is spelled out with max-subtraction, so an exported
    ONNX graph is as stable as torch; else torch's one fused op."""

    def __init__(self, weights: torch.Tensor, combine: str, graph: bool = False) -> None:
        super().__init__()
        self.combine, self.graph = combine, graph
        self.register_buffer("weights", weights.detach().float().view(1, -1, 1).clone())
        self.register_buffer("log_weights", self.weights.log())

    def forward(self, log_probs: torch.Tensor) -> torch.Tensor:
        if self.combine == "prob" and not self.graph:
            return torch.logsumexp(log_probs + self.log_weights, dim=1)
        if self.combine == "prob":
            z = log_probs + self.log_weights
            top = z.amax(dim=1, keepdim=True)
            return (top + (z - top).exp().sum(dim=1, keepdim=True).log()).squeeze(1)
        return F.log_softmax((log_probs * self.weights).sum(dim=1), dim=-1)

    def from_logits_t(self, logits_t: torch.Tensor, members: int) -> torch.Tensor:
        """The combined log-probabilities [N, C] from members' logits laid out [M*C, N]:
        softmax over a middle dim of [M, C, N] runs along N, far faster on CPU than over a
        last dim of a few classes."""
        log_probs = F.log_softmax(logits_t.reshape(members, -1, logits_t.shape[-1]), dim=1)
        weights = self.weights.view(-1, 1, 1)
        if self.combine == "prob":
            return torch.logsumexp(log_probs + self.log_weights.view(-1, 1, 1), dim=0).t()
        return F.log_softmax((log_probs * weights).sum(dim=0), dim=0).t()


def _same_settings(layers: Sequence[nn.Module]) -> bool:
    first = layers[0]
    if any(type(layer) is not type(first) for layer in layers):
        return False
    if isinstance(first, nn.Conv2d):
        return all(
            layer.groups == 1
            and all(getattr(layer, k) == getattr(first, k) for k in _CONV_SETTINGS)
            for layer in layers
        )
    if isinstance(first, nn.Linear):
        return True  # widths may differ (compaction); the stacking pads them
    return all(repr(layer) == repr(first) for layer in layers)


def _units(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def _padded(weights: list[torch.Tensor], rows: int, cols: int) -> torch.Tensor:
    """Stack member weights [O_i, I_i, ...] into [M, rows, cols, ...], zero elsewhere."""
    out = weights[0].new_zeros(len(weights), rows, cols, *weights[0].shape[2:])
    for i, w in enumerate(weights):
        out[i, : w.shape[0], : w.shape[1]] = w
    return out


def _biases(layers: Sequence[nn.Module], rows: int) -> torch.Tensor:
    out = layers[0].weight.new_zeros(len(layers), rows)
    for i, layer in enumerate(layers):
        if layer.bias is not None:
            out[i, : layer.bias.shape[0]] = layer.bias.detach()
    return out


def stack_networks(
    nets: Sequence[nn.Sequential], fold: torch.Tensor | None = None
) -> list[dict[str, nn.Module]] | None:
    """Depths of one network running all `nets` side by side, or None where they differ.

    Each depth maps names to equivalent candidate modules (dense, CSR, batched), to be
    measured. The output is [N, M*C]: member i's logits in columns i*C..(i+1)*C. Supported:
    Linear, Conv2d (groups 1), Flatten, activations, 2-d pools, Dropout/Identity (skipped).

    With `fold` (member weights [M]), the last Linear becomes one Linear computing the weighted
    sum of the members' logits, [N, C]: the "logprob" combination is the log-softmax of that
    sum (each member's log-normaliser is constant over classes), so the combination costs
    nothing. None where anything follows that Linear.
    """
    if len({len(net) for net in nets}) != 1:
        return None
    widths: list[int] | None = None  # real units per member; None while the input is shared
    depths: list[dict[str, nn.Module]] = []
    logits = False  # the last layer with weights was a Linear, followed by activations only
    last: tuple[Sequence[nn.Module], list[int] | None] | None = None  # last Linear, its input
    for layers in zip(*nets, strict=True):
        first = layers[0]
        if not _same_settings(layers):
            return None
        if isinstance(first, _NO_OPS):
            continue
        if isinstance(first, nn.Linear | nn.Conv2d):
            if first.weight.dtype != torch.float32:
                return None
            stack = _stack_linear if isinstance(first, nn.Linear) else _stack_conv
            depth = stack(layers, widths)
            if depth is None:
                return None
            depths.append(depth)
            last = (layers, widths) if isinstance(first, nn.Linear) else None
            widths = [_units(layer) for layer in layers]
            logits = isinstance(first, nn.Linear)
        elif isinstance(first, _ACTIVATIONS + _POOLS) or (
            isinstance(first, nn.Flatten) and first.start_dim == 1 and first.end_dim == -1
        ):
            depths.append(candidates(first))
            logits = logits and isinstance(first, _ACTIVATIONS)
            last = None
        else:
            return None
    if widths is None or not logits or len(set(widths)) != 1:
        return None
    if fold is not None:
        if last is None:
            return None
        depths[-1] = _fold_linear(*last, fold)
    return depths


def _member_features(layers: Sequence[nn.Linear], widths: list[int] | None) -> int | None:
    """Input features per member of a side-by-side Linear (members padded to the widest), or
    None where the members' inputs do not line up."""
    if widths is None:  # every member reads the same input
        return layers[0].in_features if len({m.in_features for m in layers}) == 1 else None
    # after a conv, Flatten lays features out channel-major: padding channels go at the end
    spatial = {layer.in_features // w for layer, w in zip(layers, widths, strict=True)}
    exact = all(layer.in_features % w == 0 for layer, w in zip(layers, widths, strict=True))
    return max(widths) * spatial.pop() if len(spatial) == 1 and exact else None


def _stack_linear(layers: Sequence[nn.Linear], widths: list[int] | None):
    rows = max(_units(layer) for layer in layers)
    features = _member_features(layers, widths)
    if features is None:
        return None
    stacked = _padded([layer.weight.detach() for layer in layers], rows, features)
    bias = _biases(layers, rows)
    if widths is None:  # every member reads the same input: one wide Linear
        return _linear_candidates(stacked.flatten(0, 1), bias.flatten(), None)
    wide = torch.block_diag(*stacked.unbind(0))  # [M*O, M*F]: member i's block on the diagonal
    return _linear_candidates(wide, bias.flatten(), (stacked, bias))


def _fold_linear(layers: Sequence[nn.Linear], widths: list[int] | None, fold: torch.Tensor):
    """One Linear [C, M*F] (or [C, F] on a shared input) giving sum_i fold_i * logits_i."""
    rows, features = _units(layers[0]), _member_features(layers, widths)
    stacked = _padded([layer.weight.detach() for layer in layers], rows, features)
    w = fold.detach().to(stacked).view(-1, 1, 1)
    bias = (_biases(layers, rows) * w[:, :, 0]).sum(dim=0)
    if widths is None:
        return _linear_candidates((stacked * w).sum(dim=0), bias, None)
    return _linear_candidates((stacked * w).transpose(0, 1).flatten(1), bias, None)


def _linear_candidates(weight: torch.Tensor, bias: torch.Tensor, batched) -> dict[str, nn.Module]:
    dense = nn.Linear(weight.shape[1], weight.shape[0]).requires_grad_(False)
    dense.weight.copy_(weight)
    dense.bias.copy_(bias)
    found = candidates(dense)
    if batched is not None:
        found["batched"] = BatchedLinear(*batched)
    return found


def _stack_conv(layers: Sequence[nn.Conv2d], widths: list[int] | None):
    first, members = layers[0], len(layers)
    rows = max(_units(layer) for layer in layers)
    if widths is None and len({layer.in_channels for layer in layers}) != 1:
        return None
    cols = first.in_channels if widths is None else max(widths)
    groups = 1 if widths is None else members  # later depths: one group per member
    conv = nn.Conv2d(cols * groups, rows * members, first.kernel_size, first.stride,
                     first.padding, first.dilation, groups, True, first.padding_mode)  # fmt: skip
    conv.requires_grad_(False)
    conv.weight.copy_(
        _padded([layer.weight.detach() for layer in layers], rows, cols).flatten(0, 1)
    )
    conv.bias.copy_(_biases(layers, rows).flatten())
    return candidates(conv)
