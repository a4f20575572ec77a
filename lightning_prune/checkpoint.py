"""Saving a trained (pruned) model as plain tensors and config, loadable with weights_only."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from lightning_prune.dynamic.restore import restore_gates
from lightning_prune.targets import safe_instantiate


def save_model(
    path: str | Path, model: nn.Module, model_config: DictConfig | dict, info: dict[str, Any]
) -> Path:
    """Write {state_dict, model_config, info}; `info` must hold plain types only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = (
        OmegaConf.to_container(model_config, resolve=True)
        if isinstance(model_config, DictConfig)
        else dict(model_config)
    )
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "model_config": config, "info": info}, path)
    return path


def _read(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model checkpoint not found: {path}")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The saved state_dict alone: for looking at the weights without the model's code."""
    return _read(path)["state_dict"]


def load_model(
    path: str | Path, *, allow: str | Iterable[str] | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from its saved config and weights; return it with its info.

    The file names the class to build, so only the project's own classes and the
    `allow` patterns (e.g. ["my_pkg.*"]) are built; anything else raises
    `UntrustedTargetError` before any of it runs (see `lightning_prune.targets`).
    A model saved with `DynamicGating` gates gets them back (`dynamic.restore`).
    """
    saved = _read(path)
    model = safe_instantiate(saved["model_config"], allow, where=f"checkpoint {path}")
    restore_gates(model, saved["state_dict"])  # a DynamicGating model: its gates first
    model.load_state_dict(saved["state_dict"])
    model.eval()
    return model, {**saved["info"], "model_config": saved["model_config"]}
