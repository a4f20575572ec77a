"""Validation of AdaptivePruning's constructor options: every error names the option and the
allowed values, and is raised before any training starts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lightning_prune.pruning.allocation import ALLOCATIONS
from lightning_prune.pruning.attention import check_attention_heads
from lightning_prune.pruning.controller import MODES
from lightning_prune.pruning.criteria import CRITERIA, Importance
from lightning_prune.pruning.granularity import GRANULARITIES, parse_nm
from lightning_prune.pruning.regrowth import REGROWTH, RegrowthMode
from lightning_prune.pruning.schedules import SCHEDULES


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_fraction(name: str, value: Any, low: float, high: float, closed_high: bool) -> float:
    """A number in [low, high] (or [low, high)); the error names the option."""
    inside = _number(value) and low <= value and (value <= high if closed_high else value < high)
    if not inside:
        bracket = "]" if closed_high else ")"
        raise ValueError(f"{name} must be a number in [{low}, {high}{bracket}, got {value!r}")
    return float(value)


def check_choice(name: str, value: Any, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
    return value


def check_patterns(name: str, value: Any) -> tuple[str, ...]:
    """A glob or a list of globs over module names, e.g. ['net.*'] or 'features.*'."""
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{name} must be a list of module-name globs, got {value!r}")
    return tuple(value)


def check_options(o: dict[str, Any]) -> None:
    """Validate every option of AdaptivePruning (o: the constructor's arguments)."""
    target = o["target_sparsity"]
    if target != "auto":
        check_fraction("target_sparsity", target, 0.0, 1.0, closed_high=False)
    check_fraction("max_sparsity", o["max_sparsity"], 0.0, 1.0, closed_high=False)
    if target != "auto" and target > o["max_sparsity"]:
        raise ValueError(
            f"target_sparsity ({target}) must not exceed max_sparsity ({o['max_sparsity']})"
        )
    if not isinstance(o["criterion"], Importance):
        check_choice("criterion", o["criterion"], sorted(CRITERIA))
    if o["criterion_kwargs"] is not None and not isinstance(o["criterion_kwargs"], Mapping):
        raise ValueError(
            f"criterion_kwargs must be a mapping or None, got {o['criterion_kwargs']!r}"
        )
    check_choice("granularity", o["granularity"], GRANULARITIES)
    parse_nm(o["nm"])
    check_attention_heads(o.get("attention_heads"))
    if o.get("attention_heads") is not None and o["granularity"] != "heads":
        raise ValueError(
            "attention_heads is only used with granularity='heads', got "
            f"granularity={o['granularity']!r}"
        )
    check_choice("allocation", o["allocation"], ALLOCATIONS)
    check_fraction("min_density", o["min_density"], 0.0, 1.0, closed_high=True)
    check_fraction("output_min_density", o["output_min_density"], 0.0, 1.0, closed_high=True)
    check_choice("schedule", o["schedule"], SCHEDULES)
    check_fraction("start", o["start"], 0.0, 1.0, closed_high=False)
    check_fraction("end", o["end"], 0.0, 1.0, closed_high=True)
    if o["schedule"] != "oneshot" and o["end"] <= o["start"]:
        raise ValueError(f"end ({o['end']}) must be greater than start ({o['start']})")
    freq = o["frequency"]
    if not isinstance(freq, int) or isinstance(freq, bool) or freq < 1:
        raise ValueError(f"frequency must be a positive integer (optimizer steps), got {freq!r}")
    total = o["total_steps"]
    if total is not None and (not isinstance(total, int) or isinstance(total, bool) or total < 1):
        raise ValueError(f"total_steps must be a positive integer or None, got {total!r}")
    for flag in ("prune_frozen", "embeddings", "verbose"):
        if not isinstance(o[flag], bool):
            raise ValueError(f"{flag} must be True or False, got {o[flag]!r}")
    check_choice("regrowth", o["regrowth"], REGROWTH)
    check_fraction("regrow_fraction", o["regrow_fraction"], 0.0, 1.0, closed_high=False)
    if o["monitor"] is not None and not isinstance(o["monitor"], str):
        raise ValueError(f"monitor must be a logged metric name or None, got {o['monitor']!r}")
    check_choice("mode", o["mode"], MODES)
    if not _number(o["tolerance"]) or o["tolerance"] < 0:
        raise ValueError(f"tolerance must be a number >= 0, got {o['tolerance']!r}")
    patience = o["patience"]
    if not isinstance(patience, int) or isinstance(patience, bool) or patience < 1:
        raise ValueError(f"patience must be a positive integer (validations), got {patience!r}")
    check_fraction("backoff_step", o["backoff_step"], 0.0, 1.0, closed_high=False)
    check_fraction("auto_initial", o["auto_initial"], 0.0, 1.0, closed_high=False)
    check_fraction("raise_factor", o["raise_factor"], 0.0, 1.0, closed_high=False)
    if target == "auto" and o["monitor"] is None:
        raise ValueError("target_sparsity='auto' needs a monitor (the metric decides the target)")
    if o["granularity"] == "n:m" and target == "auto":
        raise ValueError("target_sparsity='auto' is not available with granularity='n:m'")
    if o["granularity"] == "n:m" and RegrowthMode(o["regrowth"]).swaps:
        raise ValueError("regrowth must be 'none' with granularity='n:m'")
