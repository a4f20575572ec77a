"""Physically remove pruned attention heads (granularity "heads"), for `compact`.

A head is removable when all its weights are exactly zero: its rows of q, k and v and its
columns of the output projection. With its output-projection columns zero the head adds nothing
to the output, whatever its biases, so removing it is exact. Every block keeps at least one head.

- nn.MultiheadAttention requires num_heads * head_dim == embed_dim, so an attention with heads
  removed becomes a `CompactMultiheadAttention`: the same forward signature and function, fewer
  heads. A TransformerEncoder holding one no longer converts padded batches to nested tensors
  (`use_nested_tensor = False`), and the encoder layer's fused eval-mode fast path is off
  (`_qkv_same_embed_dim = False`); both then run the ordinary path, which calls `self_attn`.
- Attention written as separate Linears (`attention_heads` globs) loses rows of q, k, v and
  columns of out; an integer attribute `num_heads`, `n_heads` or `heads` of the block's parent
  module equal to the old head count is set to the new one. The user's forward must take the
  head count from that attribute, or the head width from the weights (reshape with -1), and
  must not reshape with a stored embed_dim before the output projection.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lightning_prune.pruning.attention import HeadBlock, check_attention_heads, find_blocks
from lightning_prune.pruning.selection import select_params

HEAD_COUNT_ATTRIBUTES = ("num_heads", "n_heads", "heads")


def _as_bias(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """Bool masks (True = not attended) as additive -inf biases; float masks as they are."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(
            mask, float("-inf")
        )
    return mask.to(dtype)


class CompactMultiheadAttention(nn.Module):
    """Multi-head attention with `num_heads` heads of width `head_dim` on `embed_dim`-wide
    inputs, where num_heads * head_dim may be less than embed_dim (heads were removed).

    Same forward as nn.MultiheadAttention: (query, key, value, key_padding_mask, need_weights,
    attn_mask, average_attn_weights, is_causal) -> (output, weights or None). `heads` lists the
    original head indices kept: a per-head 3-D `attn_mask` of shape (batch * original heads,
    L, S) is sliced to them (`head_index`). Returned attention weights average over the kept
    heads only.
    """

    _qkv_same_embed_dim = False  # never nn.TransformerEncoderLayer's fused fast path

    def __init__(
        self,
        embed_dim: int,
        heads: Sequence[int],
        head_dim: int,
        original_heads: int,
        *,
        kdim: int | None = None,
        vdim: int | None = None,
        bias: bool = True,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
        dropout: float = 0.0,
        batch_first: bool = False,
        packed: bool = True,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.embed_dim, self.head_dim = embed_dim, head_dim
        self.kdim, self.vdim = kdim or embed_dim, vdim or embed_dim
        self.num_heads, self.original_heads = len(heads), original_heads
        index = torch.tensor(list(heads), dtype=torch.long)
        self.register_buffer("head_index", index, persistent=False)
        self.dropout, self.batch_first = dropout, batch_first
        self.add_zero_attn = add_zero_attn
        width = self.num_heads * head_dim
        if packed:  # the layout of the original: one in_proj_weight when kdim == vdim == embed
            self.in_proj_weight = nn.Parameter(torch.empty(3 * width, embed_dim, **factory))
            self.q_proj_weight = self.k_proj_weight = self.v_proj_weight = None
        else:
            self.in_proj_weight = None
            self.q_proj_weight = nn.Parameter(torch.empty(width, embed_dim, **factory))
            self.k_proj_weight = nn.Parameter(torch.empty(width, self.kdim, **factory))
            self.v_proj_weight = nn.Parameter(torch.empty(width, self.vdim, **factory))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width, **factory)) if bias else None
        self.out_proj = nn.Linear(width, embed_dim, bias=bias, **factory)
        if add_bias_kv:
            self.bias_k = nn.Parameter(torch.empty(1, 1, width, **factory))
            self.bias_v = nn.Parameter(torch.empty(1, 1, width, **factory))
        else:
            self.bias_k = self.bias_v = None

    @classmethod
    @torch.no_grad()
    def from_attention(
        cls, mha: nn.MultiheadAttention, heads: Sequence[int]
    ) -> CompactMultiheadAttention:
        """A copy of `mha` with only the heads `heads` (original indices, ascending)."""
        d, embed = mha.head_dim, mha.embed_dim
        weight = mha.out_proj.weight
        new = cls(
            embed, heads, d, mha.num_heads, kdim=mha.kdim, vdim=mha.vdim,
            bias=mha.in_proj_bias is not None, add_bias_kv=mha.bias_k is not None,
            add_zero_attn=mha.add_zero_attn, dropout=mha.dropout, batch_first=mha.batch_first,
            packed=mha._qkv_same_embed_dim, device=weight.device, dtype=weight.dtype,
        )  # fmt: skip
        rows = torch.cat([torch.arange(h * d, (h + 1) * d) for h in heads]).to(weight.device)
        qkv_rows = torch.cat([rows, rows + embed, rows + 2 * embed])
        if mha._qkv_same_embed_dim:
            new.in_proj_weight.copy_(mha.in_proj_weight[qkv_rows])
        else:
            for name in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
                getattr(new, name).copy_(getattr(mha, name)[rows])
        if mha.in_proj_bias is not None:
            new.in_proj_bias.copy_(mha.in_proj_bias[qkv_rows])
        new.out_proj.weight.copy_(weight[:, rows])
        if mha.out_proj.bias is not None:
            new.out_proj.bias.copy_(mha.out_proj.bias)
        if mha.bias_k is not None:
            new.bias_k.copy_(mha.bias_k[..., rows])
            new.bias_v.copy_(mha.bias_v[..., rows])
        new.train(mha.training)
        original = dict(mha.named_parameters())
        for name, param in new.named_parameters():
            param.requires_grad_(original[name].requires_grad)
        return new

    def _projections(self) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        if self.in_proj_weight is not None:
            weights = self.in_proj_weight.chunk(3)
        else:
            weights = (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight)
        biases = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None,) * 3
        return list(zip(weights, biases, strict=True))

    def _split(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        batch, length = x.shape[:2]
        projected = F.linear(x, weight, bias)
        return projected.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if is_causal and attn_mask is None:  # as nn.MultiheadAttention: the mask is required
            raise RuntimeError("Need attn_mask if specifying the is_causal hint")
        batched = query.dim() == 3
        if not batched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        (wq, bq), (wk, bk), (wv, bv) = self._projections()
        q, k, v = self._split(query, wq, bq), self._split(key, wk, bk), self._split(value, wv, bv)
        batch, length = query.shape[:2]
        bias = _as_bias(attn_mask, q.dtype)
        if bias is not None:
            if bias.dim() == 3:  # per original head: keep the rows of the kept heads
                bias = bias.view(batch, self.original_heads, length, -1)[:, self.head_index]
            else:
                bias = bias.view(1, 1, length, -1)
        padding = _as_bias(key_padding_mask, q.dtype)
        extra = []
        if self.bias_k is not None:
            shape = (batch, self.num_heads, 1, self.head_dim)
            extra.append((self.bias_k.view(1, -1, 1, self.head_dim).expand(shape),
                          self.bias_v.view(1, -1, 1, self.head_dim).expand(shape)))  # fmt: skip
        if self.add_zero_attn:
            zeros = q.new_zeros(batch, self.num_heads, 1, self.head_dim)
            extra.append((zeros, zeros))
        for k_extra, v_extra in extra:
            k, v = torch.cat([k, k_extra], dim=2), torch.cat([v, v_extra], dim=2)
            bias = F.pad(bias, (0, 1)) if bias is not None else None
            padding = F.pad(padding, (0, 1)) if padding is not None else None
        if padding is not None:
            padding = padding.view(batch, 1, 1, -1)
            bias = padding if bias is None else bias + padding
        dropout = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = (q * (1.0 / math.sqrt(self.head_dim))) @ k.transpose(-2, -1)
            if bias is not None:
                scores = scores + bias
            weights = scores.softmax(dim=-1)
            attended = F.dropout(weights, dropout, self.training) if dropout else weights
            out = attended @ v
            if average_attn_weights:
                weights = weights.mean(dim=1)
            if not batched:
                weights = weights.squeeze(0)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout)
        out = self.out_proj(out.transpose(1, 2).reshape(batch, length, -1))
        if not batched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads} of {self.original_heads}, "
            f"head_dim={self.head_dim}, batch_first={self.batch_first}"
        )


def _kept_heads(block: HeadBlock, weights: Mapping[str, torch.Tensor]) -> list[int]:
    """Heads with some nonzero weight; at least one (the first) per block."""
    alive = block.head_any({name: weights[name] != 0 for name in block.names})
    kept = alive.nonzero().flatten().tolist()
    return kept or [0]


def _blocks(model: nn.Module, attention_heads: Mapping[str, Any] | None) -> list[HeadBlock]:
    try:
        params = select_params(model, ("*",), ())
    except ValueError:  # no Linear / attention at all
        return []
    return find_blocks(params, check_attention_heads(attention_heads), strict=False)


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach() for name, p in model.named_parameters(remove_duplicate=False)}


@torch.no_grad()
def shrink_linear_heads(
    model: nn.Module, attention_heads: Mapping[str, Any] | None, ignored: set[nn.Module]
) -> int:
    """Remove the dead heads of separate-Linear attention blocks in place; returns how many."""
    if attention_heads is None:
        return 0
    removed = 0
    weights = _weights(model)
    for block in _blocks(model, attention_heads):
        if block.linears is None or ignored & set(block.modules):
            continue
        kept = _kept_heads(block, weights)
        if len(kept) == block.num_heads:
            continue
        for role, linear in block.linears.items():
            width = linear.in_features if role == "out" else linear.out_features
            width //= block.num_heads
            index = torch.cat([torch.arange(h * width, (h + 1) * width) for h in kept])
            index = index.to(linear.weight.device)
            _shrink_linear(linear, index, inputs=role == "out")
        parent = model.get_submodule(block.name) if block.name else model
        for attribute in HEAD_COUNT_ATTRIBUTES:
            value = getattr(parent, attribute, None)
            if isinstance(value, int) and not isinstance(value, bool) and value == block.num_heads:
                setattr(parent, attribute, len(kept))
        removed += block.num_heads - len(kept)
    return removed


def _shrink_linear(linear: nn.Linear, index: torch.Tensor, inputs: bool) -> None:
    weight = linear.weight
    if inputs:
        linear.weight = nn.Parameter(weight[:, index].clone(), weight.requires_grad)
        linear.in_features = index.numel()
        return
    linear.weight = nn.Parameter(weight[index].clone(), weight.requires_grad)
    if linear.bias is not None:
        linear.bias = nn.Parameter(linear.bias[index].clone(), linear.bias.requires_grad)
    linear.out_features = index.numel()


@torch.no_grad()
def replace_attention_heads(model: nn.Module, ignored: set[nn.Module]) -> int:
    """Replace every nn.MultiheadAttention with dead heads by a CompactMultiheadAttention
    (in place); returns how many heads went."""
    removed = 0
    weights = _weights(model)
    for block in _blocks(model, None):
        mha = block.attention
        if mha is None or not block.name or ignored & set(block.modules):
            continue
        kept = _kept_heads(block, weights)
        if len(kept) == block.num_heads:
            continue
        parent_name, _, attribute = block.name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attribute, CompactMultiheadAttention.from_attention(mha, kept))
        removed += block.num_heads - len(kept)
    if removed:
        for module in model.modules():
            if isinstance(module, nn.TransformerEncoder) and any(
                isinstance(getattr(layer, "self_attn", None), CompactMultiheadAttention)
                for layer in module.layers
            ):
                module.use_nested_tensor = False  # the nested path needs the fused layer
    return removed
