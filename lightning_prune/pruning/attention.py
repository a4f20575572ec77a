"""Attention heads as pruning groups: which weights of a model make up each head.

A head h of `nn.MultiheadAttention` is rows [h*d, (h+1)*d) of each of the q, k and v blocks of
`in_proj_weight` (or of `q/k/v_proj_weight`) plus columns [h*d, (h+1)*d) of `out_proj.weight`,
d = embed_dim // num_heads. Attention written as separate Linear layers is described by
`attention_heads={"q": glob, "k": glob, "v": glob, "out": glob, "num_heads": H}` (globs over
module names); the four Linears of one block share their parent prefix ("blocks.0.attn.q_proj"
and "blocks.0.attn.o_proj" both belong to "blocks.0.attn"), and a head is rows of q, k, v and
columns of out. Used by the "heads" granularity and by `export.compact`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lightning_prune.pruning.selection import PrunableParam

HEAD_ROLES = ("q", "k", "v", "out")
EXAMPLE = '{"q": "*.q_proj", "k": "*.k_proj", "v": "*.v_proj", "out": "*.o_proj", "num_heads": 4}'


def check_attention_heads(value: Any) -> dict[str, Any] | None:
    """Validate `attention_heads`; returns it with every glob as a tuple of globs."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError(f"attention_heads must be a mapping like {EXAMPLE} or None, got {value!r}")
    expected = {*HEAD_ROLES, "num_heads"}
    missing, unknown = sorted(expected - set(value)), sorted(set(value) - expected, key=str)
    if missing or unknown:
        raise ValueError(
            f"attention_heads needs exactly the keys ['q', 'k', 'v', 'out', 'num_heads'] "
            f"(e.g. {EXAMPLE}); missing {missing}, unknown {unknown}"
        )
    checked: dict[str, Any] = {}
    for role in HEAD_ROLES:
        globs = value[role]
        if isinstance(globs, str):
            globs = (globs,)
        if (
            not isinstance(globs, Sequence)
            or not globs
            or not all(isinstance(g, str) and g for g in globs)
        ):
            raise ValueError(
                f"attention_heads[{role!r}] must be a module-name glob like '*.{role}_proj' "
                f"(or a list of globs), got {value[role]!r}"
            )
        checked[role] = tuple(globs)
    heads = value["num_heads"]
    if not isinstance(heads, int) or isinstance(heads, bool) or heads < 1:
        raise ValueError(f"attention_heads['num_heads'] must be a positive integer, got {heads!r}")
    checked["num_heads"] = heads
    return checked


@dataclass(eq=False)
class HeadBlock:
    """One attention block whose heads are pruned (and removed) together.

    `rows`: (parameter name, first row, rows per head) -- head h owns rows
    [first + h*width, first + (h+1)*width); `cols`: (parameter name, columns per head) -- head h
    owns columns [h*width, (h+1)*width). The first row entry's parameter is the block's leader:
    it carries the block's group scores and keep vector.
    """

    name: str
    num_heads: int
    rows: list[tuple[str, int, int]]
    cols: list[tuple[str, int]]
    attention: nn.MultiheadAttention | None = None
    linears: dict[str, nn.Linear] | None = None  # role -> Linear for separate-Linear attention

    @property
    def leader(self) -> str:
        return self.rows[0][0]

    @property
    def names(self) -> list[str]:
        return list(dict.fromkeys([n for n, _, _ in self.rows] + [n for n, _ in self.cols]))

    @property
    def modules(self) -> list[nn.Module]:
        if self.attention is not None:
            return [self.attention, self.attention.out_proj]
        return list((self.linears or {}).values())

    def head_size(self, shapes: Mapping[str, torch.Size]) -> int:
        """Weights in one head, summed over every parameter of the block."""
        size = sum(width * shapes[name][1:].numel() for name, _, width in self.rows)
        return size + sum(width * shapes[name][0] for name, width in self.cols)

    def _per_head(self, tensors: Mapping[str, torch.Tensor], reduce: str) -> torch.Tensor:
        heads, parts = self.num_heads, []
        for name, first, width in self.rows:
            part = tensors[name][first : first + heads * width].reshape(heads, -1)
            parts.append(part.sum(1) if reduce == "sum" else part.any(1))
        for name, width in self.cols:
            t = tensors[name]
            part = t[:, : heads * width].reshape(t.shape[0], heads, width).transpose(0, 1)
            part = part.reshape(heads, -1)
            parts.append(part.sum(1) if reduce == "sum" else part.any(1))
        stacked = torch.stack([p.to(parts[0].device) for p in parts])
        return stacked.sum(0) if reduce == "sum" else stacked.any(0)

    def head_sums(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(num_heads,) sums of `tensors` (weight-shaped, by parameter name) over each head."""
        return self._per_head({n: tensors[n].double() for n in self.names}, "sum")

    def head_any(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(num_heads,) bool: some entry of the head is True in `tensors` (bool, weight-shaped)."""
        return self._per_head(tensors, "any")

    def masks(
        self, keep: torch.Tensor, shapes: Mapping[str, torch.Size], device: torch.device
    ) -> dict[str, torch.Tensor]:
        """Weight-shaped bool masks of the block's parameters that keep the heads in `keep`."""
        keep = keep.to(device=device, dtype=torch.bool)
        out = {n: torch.ones(shapes[n], dtype=torch.bool, device=device) for n in self.names}
        for name, first, width in self.rows:
            rows = keep.repeat_interleave(width)
            out[name][first : first + rows.numel()] &= rows.view(-1, *[1] * (len(shapes[name]) - 1))
        for name, width in self.cols:
            cols = keep.repeat_interleave(width)
            out[name][:, : cols.numel()] &= cols.view(1, -1)
        return out


def _local(p: PrunableParam) -> str:
    return p.name.rpartition(".")[2]


def _incomplete(strict: bool, message: str) -> None:
    if strict:
        raise ValueError(f"granularity='heads': {message}")


def _attention_blocks(params: Sequence[PrunableParam], strict: bool) -> list[HeadBlock]:
    by_weight = {id(p.param): p for p in params}
    groups: dict[int, list[PrunableParam]] = {}
    for p in params:
        if isinstance(p.module, nn.MultiheadAttention):
            groups.setdefault(id(p.module), []).append(p)
    blocks = []
    for group in groups.values():
        mha: nn.MultiheadAttention = group[0].module
        name = group[0].module_name
        local = {_local(p): p.name for p in group}
        d, embed = mha.head_dim, mha.embed_dim
        if "in_proj_weight" in local:
            first = local["in_proj_weight"]
            rows = [(first, 0, d), (first, embed, d), (first, 2 * embed, d)]
        elif {"q_proj_weight", "k_proj_weight", "v_proj_weight"} <= set(local):
            rows = [(local[f"{r}_proj_weight"], 0, d) for r in "qkv"]
        else:
            _incomplete(strict, f"q, k and v weights of {name or 'the model'} are not all pruned")
            continue
        out = by_weight.get(id(mha.out_proj.weight))
        if out is None:
            _incomplete(
                strict,
                f"a head spans q, k, v rows and out_proj columns, but {name}.out_proj is not "
                f"selected; include it, or exclude the whole attention ('{name}*')",
            )
            continue
        if d * mha.num_heads != embed:
            _incomplete(strict, f"embed_dim {embed} of {name} is not divisible by num_heads")
            continue
        blocks.append(HeadBlock(name, mha.num_heads, rows, [(out.name, d)], attention=mha))
    return blocks


def _linear_blocks(
    params: Sequence[PrunableParam], spec: Mapping[str, Any], strict: bool
) -> list[HeadBlock]:
    heads = spec["num_heads"]
    parents: dict[str, dict[str, list[PrunableParam]]] = {}
    for p in params:
        if not isinstance(p.module, nn.Linear) or _local(p) != "weight":
            continue
        if any(isinstance(o, nn.MultiheadAttention) for o in p.owners):
            continue  # an nn.MultiheadAttention's own out_proj
        roles = [
            r for r in HEAD_ROLES if any(fnmatch.fnmatchcase(p.module_name, g) for g in spec[r])
        ]
        if len(roles) > 1:
            raise ValueError(
                f"attention_heads: module {p.module_name!r} matches the globs of both "
                f"{roles[0]!r} and {roles[1]!r}"
            )
        if roles:
            parent = p.module_name.rpartition(".")[0]
            parents.setdefault(parent, {r: [] for r in HEAD_ROLES})[roles[0]].append(p)
    if not parents and strict:
        raise ValueError(
            f"attention_heads: the globs {dict(spec)} match no selected nn.Linear module "
            "(module names are relative to the LightningModule, e.g. 'net.blocks.0.attn.q_proj'; "
            "use leading '*' globs)"
        )
    blocks = []
    for parent, roles in parents.items():
        several = [r for r in HEAD_ROLES if len(roles[r]) > 1]
        if several:
            raise ValueError(
                f"attention_heads: under {parent!r} the {several[0]!r} glob matches several "
                f"modules {[p.module_name for p in roles[several[0]]]}"
            )
        missing = [r for r in HEAD_ROLES if not roles[r]]
        if missing:
            found = {r: roles[r][0].module_name for r in HEAD_ROLES if roles[r]}
            _incomplete(
                strict,
                f"attention_heads: {parent!r} has {found} but nothing (selected) matches "
                f"{[f'{r}={spec[r]}' for r in missing]}",
            )
            continue
        q, k, v, o = (roles[r][0] for r in HEAD_ROLES)
        qk, vo = q.param.shape[0], v.param.shape[0]
        problem = None
        if k.param.shape[0] != qk or o.param.shape[1] != vo:
            problem = (
                f"inconsistent shapes: q out {qk}, k out {k.param.shape[0]}, v out {vo}, "
                f"out in {o.param.shape[1]} (q and k out, and v out and out in, must agree)"
            )
        elif qk % heads or vo % heads:
            problem = f"num_heads={heads} does not divide the q/k ({qk}) or v ({vo}) width"
        if problem:
            raise ValueError(f"attention_heads: {parent!r}: {problem}")
        rows = [(q.name, 0, qk // heads), (k.name, 0, qk // heads), (v.name, 0, vo // heads)]
        linears = {r: roles[r][0].module for r in HEAD_ROLES}
        blocks.append(HeadBlock(parent, heads, rows, [(o.name, vo // heads)], linears=linears))
    return blocks


def find_blocks(
    params: Sequence[PrunableParam], spec: Mapping[str, Any] | None, strict: bool = False
) -> list[HeadBlock]:
    """The attention blocks among `params`: every nn.MultiheadAttention, plus the Linear blocks
    that `spec` (a checked `attention_heads`) describes.

    `strict` raises a ValueError for a block that is only partly selected (`include`/`exclude`);
    otherwise such a block is left out (its weights stay dense). Shape errors always raise.
    """
    blocks = _attention_blocks(params, strict)
    if spec is not None:
        blocks += _linear_blocks(params, spec, strict)
    return blocks
