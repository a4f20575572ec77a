"""Make pruning permanent: plain parameters with exact zeros, no masks or hooks left.

A pruned model must load into a fresh, unpruned copy of its architecture. That fails
while ``torch.nn.utils.prune`` reparametrisations (``weight_orig`` + ``weight_mask``)
or ``torch.nn.utils.parametrize`` parametrisations remain, so both are folded away here.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize, prune


def _resolve_param(params: dict[str, nn.Parameter], name: str) -> nn.Parameter:
    """Find ``name`` among ``params``, allowing a prefix on either side (e.g. ``net.``)."""
    if name in params:
        return params[name]
    matches = [key for key in params if key.endswith("." + name) or name.endswith("." + key)]
    if len(matches) != 1:
        found = "several parameters" if matches else "no parameter"
        raise KeyError(f"masks: {found} of the model match the mask name {name!r}")
    return params[matches[0]]


def _remove_prune_reparametrisations(model: nn.Module) -> None:
    """Replace ``weight_orig * weight_mask`` (torch.nn.utils.prune) by a plain parameter."""
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(module, hook._tensor_name)


def _remove_parametrizations(model: nn.Module) -> None:
    """Bake ``torch.nn.utils.parametrize`` parametrisations into plain parameters."""
    for module in model.modules():
        if parametrize.is_parametrized(module):
            for tensor_name in list(module.parametrizations.keys()):
                parametrize.remove_parametrizations(module, tensor_name, leave_parametrized=True)


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero every parameter entry whose mask is False (in place)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            param = _resolve_param(params, name)
            if mask.shape != param.shape:
                raise ValueError(
                    f"masks[{name!r}] has shape {tuple(mask.shape)}, "
                    f"the parameter has shape {tuple(param.shape)}"
                )
            param.mul_(mask.to(device=param.device, dtype=torch.bool).to(param.dtype))


def make_permanent(model: nn.Module, masks: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Apply ``masks`` (parameter name -> bool, True = keep) and remove pruning machinery.

    Works in place and returns ``model``. Mask names may carry or lack a wrapper prefix
    such as ``net.`` (masks taken on a LightningModule, applied to its ``.net``). Afterwards
    the model holds only plain parameters with exact zeros, so its ``state_dict`` loads into
    a freshly built model of the same architecture.
    """
    _remove_prune_reparametrisations(model)
    _remove_parametrizations(model)
    if masks:
        apply_masks(model, masks)
    return model
