"""Which weights of a model are prunable, and how much of the model they cover.

Covered module types: Linear, Conv1d/2d/3d, ConvTranspose1d/2d/3d, MultiheadAttention
(`in_proj_weight` or `q/k/v_proj_weight`; `out_proj` is a Linear), RNN/LSTM/GRU
(`weight_ih_l*`, `weight_hh_l*`, `weight_hr_l*`) and, opt-in, Embedding. A parameter shared by
several modules (tied embedding and decoder) is one prunable weight with one mask.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import nn
from torch.nn.parameter import is_lazy
from torch.nn.utils import parametrize

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
TRANSPOSED_TYPES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    *CONV_TYPES,
    *TRANSPOSED_TYPES,
    nn.MultiheadAttention,
    nn.RNNBase,
    nn.Embedding,
)
RNN_PREFIXES = ("weight_ih_l", "weight_hh_l", "weight_hr_l")
MHA_WEIGHTS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")


@dataclass(eq=False)
class PrunableParam:
    """One prunable weight.

    `unit_axis` holds the output units that structured pruning removes (rows of a Linear, dim 1
    of a transposed conv); `block_axis` is the reduction axis along which N:M blocks run.
    `owners` are the modules whose forward uses the weight (several when it is tied); the one
    that ran last in a training forward decides `is_output`.
    """

    name: str
    module_name: str
    module: nn.Module
    param: nn.Parameter
    is_output: bool = False
    unit_axis: int = 0
    block_axis: int = 1
    owners: tuple[nn.Module, ...] = field(default_factory=tuple)

    @property
    def frozen(self) -> bool:
        return not self.param.requires_grad


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def _owner_for_trace(model: nn.Module, module_name: str, module: nn.Module) -> nn.Module:
    """MultiheadAttention calls its `out_proj` functionally: its forward hooks never fire, so the
    attention module itself tells when `out_proj` ran."""
    parent_name = module_name.rpartition(".")[0]
    if module_name.endswith("out_proj"):
        parent = model.get_submodule(parent_name) if parent_name else model
        if isinstance(parent, nn.MultiheadAttention):
            return parent
    return module


def module_weights(module: nn.Module, embeddings: bool) -> list[tuple[str, int, int]]:
    """(local parameter name, unit axis, block axis) of the prunable weights of one module."""
    if isinstance(module, nn.Embedding):
        return [("weight", 1, 1)] if embeddings else []
    if isinstance(module, TRANSPOSED_TYPES):
        return [("weight", 1, 0)]
    if isinstance(module, (nn.Linear, *CONV_TYPES)):
        return [("weight", 0, 1)]
    if isinstance(module, nn.MultiheadAttention):
        return [(n, 0, 1) for n in MHA_WEIGHTS if getattr(module, n, None) is not None]
    if isinstance(module, nn.RNNBase):
        names = [n for n, _ in module.named_parameters(recurse=False)]
        return [(n, 0, 1) for n in names if n.startswith(RNN_PREFIXES)]
    return []


def select_params(
    model: nn.Module,
    include: Sequence[str],
    exclude: Sequence[str],
    embeddings: bool = False,
) -> list[PrunableParam]:
    """Prunable weights of modules whose name matches `include` and not `exclude`.

    `is_output` is a first guess (the last match in registration order) that the callback
    replaces by the execution order of a training forward. Parametrized weights (weight_norm,
    spectral_norm: computed, not stored) are never selected. Raises a ValueError when a matched
    weight is still lazy (it has no shape to mask yet) and one naming `include` when nothing
    matches.
    """
    chosen: dict[int, PrunableParam] = {}
    candidates = []  # modules with a weight AdaptivePruning can prune, matched or not
    parametrized = []  # matched modules whose weights are computed by a parametrization
    lazy = []  # matched modules whose weights do not exist yet
    for module_name, module in model.named_modules():
        weights = module_weights(module, embeddings)
        plain = [w for w in weights if not parametrize.is_parametrized(module, w[0])]
        if plain:
            candidates.append(module_name)
        if not weights or not _matches(module_name, include) or _matches(module_name, exclude):
            continue
        if len(plain) < len(weights):
            parametrized.append(module_name)
        owner = _owner_for_trace(model, module_name, module)
        for local, unit_axis, block_axis in plain:
            param = getattr(module, local)
            if not isinstance(param, nn.Parameter):
                continue
            if is_lazy(param):
                lazy.append(module_name)
                continue
            key = id(param)
            if key in chosen:  # tied weight: one mask, every user is an owner
                chosen[key].owners = (*chosen[key].owners, owner)
                continue
            chosen[key] = PrunableParam(
                name=f"{module_name}.{local}" if module_name else local,
                module_name=module_name,
                module=module,
                param=param,
                unit_axis=unit_axis,
                block_axis=block_axis,
                owners=(owner,),
            )
    if lazy:
        raise _lazy_error(list(dict.fromkeys(lazy)), exclude)
    params = list(chosen.values())
    if not params:
        raise _nothing_matched_error(include, exclude, candidates, parametrized)
    params[-1].is_output = True
    return params


def _listed(names: Sequence[str], limit: int = 20) -> str:
    return f"{list(names[:limit])}" + (" ..." if len(names) > limit else "")


def _lazy_error(lazy: Sequence[str], exclude: Sequence[str]) -> ValueError:
    """A lazy module (nn.LazyLinear, nn.LazyConv2d) creates its weight in its first forward:
    before it there is no shape to build a mask for."""
    return ValueError(
        f"AdaptivePruning: the weights of the lazy module(s) {_listed(lazy)} are not created "
        "yet, so they cannot be pruned. Run one forward pass before fit so they exist (a dummy "
        "batch through the model in `setup` or `configure_model`, or `model(example_batch)` "
        f"before `trainer.fit`), or leave them dense with exclude={[*exclude, *lazy]}."
    )


def _nothing_matched_error(
    include: Sequence[str],
    exclude: Sequence[str],
    candidates: Sequence[str],
    parametrized: Sequence[str],
) -> ValueError:
    message = (
        f"AdaptivePruning: no parameter matched include={list(include)} (exclude={list(exclude)})"
    )
    if parametrized:
        message += (
            f"; the weights of {_listed(parametrized)} are parametrized (torch.nn.utils."
            "parametrize, e.g. weight_norm or spectral_norm) and parametrized weights are not "
            "pruned"
        )
    if candidates:
        message += f"; prunable modules are {_listed(candidates)}"
    else:
        message += "; the model has no prunable module"
    return ValueError(message)


def _owning_types(model: nn.Module) -> dict[int, str]:
    """Parameter id -> type name of the module that registers it."""
    return {
        id(param): type(module).__name__
        for module in model.modules()
        for param in module.parameters(recurse=False)
    }


def coverage(
    model: nn.Module, covered: Sequence[PrunableParam]
) -> tuple[float, list[tuple[str, int, str]]]:
    """Fraction of the model's parameters (counted once each) the masks cover, and the
    uncovered weight matrices (name, size, reason), largest first."""
    covered_ids = {id(p.param) for p in covered}
    owners = _owning_types(model)
    seen: set[int] = set()
    total = covered_total = 0
    skipped = []
    for name, param in model.named_parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
        if id(param) in covered_ids:
            covered_total += param.numel()
        elif param.dim() >= 2:
            skipped.append((name, param.numel(), _skip_reason(param, owners.get(id(param), ""))))
    skipped.sort(key=lambda item: -item[1])
    return covered_total / max(1, total), skipped


def _skip_reason(param: nn.Parameter, owner_type: str) -> str:
    if not param.requires_grad:
        return "frozen (prune_frozen=True prunes it by magnitude)"
    if owner_type == "ParametrizationList":
        return "parametrized (weight_norm, spectral_norm: parametrized weights are not pruned)"
    if owner_type == "Embedding":
        return "Embedding (opt-in: embeddings=True)"
    if owner_type in {t.__name__ for t in PRUNABLE_TYPES} or owner_type.endswith("Linear"):
        return "excluded by include/exclude"
    return f"{owner_type or 'custom'} parameter (not a supported module type)"


def check_no_overlap(
    params: Sequence[PrunableParam], others: Sequence[Sequence[PrunableParam]]
) -> None:
    """Two AdaptivePruning callbacks may split a model, never share a weight."""
    mine = {id(p.param): p.name for p in params}
    shared = sorted(mine[id(p.param)] for group in others for p in group if id(p.param) in mine)
    if shared:
        raise ValueError(
            f"Two AdaptivePruning callbacks would prune the same weights {shared[:5]}; give them "
            "disjoint include/exclude patterns."
        )
