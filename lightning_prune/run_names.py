"""MLflow run names that say what a run is: `trial-7`, `study-<name>`, `dense-reference`,
`ensemble-optimized-k5`, `train-<pruning preset>` (`train-dense` without pruning).

A run created without a name gets two random words from MLflow, which tell a reader nothing
in the run table. A user's `run_name` still wins for `train`.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from lightning_prune.config import config_groups, load_preset

DENSE_REFERENCE = "dense-reference"


def trial_run(number: int) -> str:
    return f"trial-{number}"


def study_run(study_name: str) -> str:
    return f"study-{study_name}"


def ensemble_run(weighting: str, k: int) -> str:
    return f"ensemble-{weighting}-k{k}"


def _leaves(value: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(value, dict):
        return {prefix: value}
    out: dict[str, Any] = {}
    for key, inner in value.items():
        out.update(_leaves(inner, f"{prefix}.{key}" if prefix else str(key)))
    return out


def pruning_preset(pruning: DictConfig | dict | None) -> str:
    """The `pruning` preset a config was composed from: "dense" without a callback, else the
    preset (conf/pruning/*.yaml) that differs from it in the fewest options.

    The composed config no longer names the group's choice, so it is recovered from the
    values; a preset with a few options overridden (`pruning=dns pruning.frequency=10`) is
    still recognised.
    """
    if isinstance(pruning, DictConfig):
        pruning = OmegaConf.to_container(pruning, resolve=True)
    if not pruning or "_target_" not in pruning:
        return "dense"
    mine = _leaves(pruning)
    best, fewest = "custom", None
    for name in config_groups().get("pruning", []):
        preset = OmegaConf.to_container(load_preset("pruning", name), resolve=True)
        if preset.get("_target_") != pruning["_target_"]:
            continue
        theirs = _leaves(preset)
        differing = sum(mine.get(k) != theirs.get(k) for k in set(mine) | set(theirs))
        if fewest is None or differing < fewest:
            best, fewest = name, differing
    return best


def train_run(cfg: DictConfig) -> str:
    """The user's `run_name` when set, else `train-<pruning preset>`."""
    return cfg.get("run_name") or f"train-{pruning_preset(cfg.get('pruning'))}"
