"""The search space shaped by the demand, so the budget goes to recipes that can meet it.

`search.demand` states what a deployable model must satisfy. Before any trial runs:

- `min_sparsity`, `max_nonzero_params` and `max_flops` become one least target sparsity
  (the last two from the model itself, built once: parameters outside the prunable weights
  stay dense, and FLOPs are counted at a uniform density over the prunable layers; where
  trials may gate per input, gates cut FLOPs too, so `max_flops` sets no floor then);
- `target_sparsity` is then sampled in `[least, high]`, and N:M patterns less sparse than
  that (`1 - N/M < least`) are left out, with `n:m` itself when no pattern is left;
- `max_latency_ms` is compared with the dense model's latency: masks that zero single weights
  (unstructured, N:M) leave the dense latency unchanged, so when the dense model is too
  slow only structured pruning stays in the space.

Whatever the demand, N:M patterns whose M does not divide the input width of a pruned layer
(LeNet-5's first convolution has one input channel) are left out, with `n:m` itself when none
fits: each of their trials would fail at its start.

A demand nothing in the space can meet is a ConfigError before training.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lightning_prune.config import ConfigError

# granularities whose masks keep the model's dense shapes (no lower dense latency)
SHAPE_KEEPING = ("unstructured", "n:m")


@dataclass(frozen=True)
class Floor:
    """The least target sparsity that can meet the demand, and what set it."""

    sparsity: float
    because: str


def nm_sparsity(pattern: str) -> float:
    """Sparsity of an N:M pattern: 2:4 keeps 2 of every 4 weights, 0.5."""
    n, m = (int(v) for v in str(pattern).split(":"))
    return 1.0 - n / m


def _pruning_option(cfg: DictConfig, key: str) -> Any:
    """The configured pruning option, or the callback's default when the group is dense."""
    value = OmegaConf.select(cfg, f"pruning.{key}", default=None)
    if value is not None:
        return value
    from lightning_prune.pruning import AdaptivePruning

    return inspect.signature(AdaptivePruning).parameters[key].default


def _model_counts(cfg: DictConfig) -> dict[str, float]:
    """Total and prunable parameters and dense FLOPs of the configured model (built once)."""
    from lightning_prune.pruning.selection import select_params
    from lightning_prune.pruning.stats import measure_macs
    from lightning_prune.train import build_model

    model = build_model(cfg)
    include = _pruning_option(cfg, "include")
    exclude = _pruning_option(cfg, "exclude")
    include = [include] if isinstance(include, str) else list(include)
    exclude = [exclude] if isinstance(exclude, str) else list(exclude)
    prunable = select_params(model, include, exclude)
    counts = {
        "total": float(sum(p.numel() for p in model.parameters())),
        "prunable": float(sum(p.param.numel() for p in prunable)),
    }
    example = getattr(model, "example_input_array", None)
    if example is not None:
        names = {p.name for p in prunable}
        macs = measure_macs(model, example)
        counts["flops"] = 2.0 * sum(macs.values())
        counts["prunable_flops"] = 2.0 * sum(v for k, v in macs.items() if k in names)
    return counts


def sparsity_floor(cfg: DictConfig) -> Floor | None:
    """The least target sparsity the demand implies (None without a sparsity-like demand)."""
    demand = dict(cfg.search.demand or {})
    floors: list[Floor] = []
    if demand.get("min_sparsity") is not None:
        floors.append(Floor(float(demand["min_sparsity"]), "search.demand.min_sparsity"))
    if demand.get("max_nonzero_params") is None and (
        demand.get("max_flops") is None or _may_gate(cfg)
    ):
        return max(floors, key=lambda f: f.sparsity, default=None)
    counts = _model_counts(cfg)
    if demand.get("max_nonzero_params") is not None:
        bound = float(demand["max_nonzero_params"])
        dense_rest = counts["total"] - counts["prunable"]
        least = (counts["total"] - bound) / max(counts["prunable"], 1.0)
        if bound <= dense_rest:
            raise ConfigError(
                f"search.demand.max_nonzero_params={bound:g} cannot be met: "
                f"{dense_rest:g} parameters of the model are not prunable weights "
                f"(of {counts['total']:g}); raise it above {dense_rest:g}"
            )
        floors.append(Floor(max(0.0, least), "search.demand.max_nonzero_params"))
    if demand.get("max_flops") is not None and not _may_gate(cfg):
        bound = float(demand["max_flops"])
        if "flops" not in counts:
            raise ConfigError(
                "search.demand.max_flops needs the model's example_input_array to count FLOPs"
            )
        dense_rest = counts["flops"] - counts["prunable_flops"]
        if bound <= dense_rest:
            raise ConfigError(
                f"search.demand.max_flops={bound:g} cannot be met: {dense_rest:g} FLOPs of "
                f"the model are in layers that are not pruned (dense {counts['flops']:g})"
            )
        least = (counts["flops"] - bound) / max(counts["prunable_flops"], 1.0)
        floors.append(Floor(max(0.0, least), "search.demand.max_flops (at uniform density)"))
    return max(floors, key=lambda f: f.sparsity)


def _may_gate(cfg: DictConfig) -> bool:
    """Whether trials may run per-input gates (`dynamic=gated`, or a `dynamic` mode in the
    space): gates also cut FLOPs, so `max_flops` sets no sparsity floor then."""
    space = cfg.search.get("space") or {}
    modes = [e for e in space.values() if isinstance(e, Mapping) and e.get("target") == "dynamic"]
    if modes:
        return any(m in ("dynamic", "both") for e in modes for m in e.get("choices") or [])
    return bool((cfg.get("dynamic") or {}).get("_target_"))


def dense_too_slow(cfg: DictConfig) -> float | None:
    """The dense model's latency when it exceeds `search.demand.max_latency_ms`, else None."""
    bound = (cfg.search.demand or {}).get("max_latency_ms")
    if bound is None:
        return None
    from lightning_prune.search.objective import latency_ms

    from lightning_prune.train import build_model

    dense = latency_ms(build_model(cfg))
    return dense if dense > float(bound) else None


def _entry(space: dict[str, Any], target: str) -> tuple[str, dict[str, Any]] | tuple[None, None]:
    for name, entry in space.items():
        if isinstance(entry, dict) and entry.get("target") == target:
            return name, entry
    return None, None


def _fixed(cfg: DictConfig, key: str, space: dict[str, Any]) -> Any:
    """The value a trial uses for `pruning.key` when the space does not search it."""
    name, _ = _entry(space, f"pruning.{key}")
    return None if name is not None else _pruning_option(cfg, key)


def _narrow_granularities(cfg: DictConfig, space: dict, floor: Floor | None, slow: float | None):
    """Leave out the granularities (and N:M patterns) that cannot meet the demand."""
    notes: list[str] = []
    g_name, g_entry = _entry(space, "pruning.granularity")
    offered = list(g_entry["choices"]) if g_name else [_fixed(cfg, "granularity", space)]
    left = list(offered)
    if slow is not None:
        bound = cfg.search.demand.max_latency_ms
        left = [g for g in left if g not in SHAPE_KEEPING]
        notes.append(
            f"the dense model takes {slow:.3f} ms > search.demand.max_latency_ms={bound}: "
            "unstructured and n:m masks keep dense shapes (no lower latency), so only "
            "structured pruning is searched"
        )
    nm_name, nm_entry = _entry(space, "pruning.nm")
    if floor is not None and "n:m" in left:
        patterns = list(nm_entry["choices"]) if nm_name else [_fixed(cfg, "nm", space)]
        reach = [p for p in patterns if nm_sparsity(p) >= floor.sparsity - 1e-9]
        if not reach:
            left.remove("n:m")
            notes.append(
                f"n:m left out: its patterns ({', '.join(map(str, patterns))}) reach at most "
                f"sparsity {max(nm_sparsity(p) for p in patterns):.2f} < "
                f"{floor.sparsity:.4f} ({floor.because})"
            )
        elif nm_name and len(reach) < len(patterns):
            nm_entry["choices"] = reach
            notes.append(f"n:m patterns below {floor.sparsity:.4f} left out: searching {reach}")
    if not left:
        raise ConfigError(
            f"no granularity in {offered} can meet search.demand "
            f"({_demand_text(cfg)}); add structured to search.space.granularity.choices "
            "or relax the demand"
        )
    if g_name and left != offered:
        g_entry["choices"] = left
    return left, notes


def _demand_text(cfg: DictConfig) -> str:
    demand = dict(cfg.search.demand or {})
    return ", ".join(f"{k}={v}" for k, v in demand.items() if v is not None)


def _narrow_target(cfg: DictConfig, space: dict, floor: Floor, granularities: list[str]):
    """Sample `target_sparsity` from the floor up (N:M trials take their pattern instead)."""
    if granularities == ["n:m"]:
        return []
    cap = float(_pruning_option(cfg, "max_sparsity"))
    if floor.sparsity > cap:
        raise ConfigError(
            f"{floor.because} needs target sparsity >= {floor.sparsity:.4f}, above "
            f"pruning.max_sparsity={cap}; raise pruning.max_sparsity or relax the demand"
        )
    name, entry = _entry(space, "pruning.target_sparsity")
    if name is None:
        target = _fixed(cfg, "target_sparsity", space)
        if target != "auto" and float(target) < floor.sparsity - 1e-9:
            raise ConfigError(
                f"pruning.target_sparsity={target} is below {floor.sparsity:.4f} "
                f"({floor.because}) and is not searched; raise it or add target_sparsity "
                "to search.space"
            )
        return []
    if "choices" in entry:
        kept = [c for c in entry["choices"] if c == "auto" or float(c) >= floor.sparsity - 1e-9]
        if not kept:
            raise ConfigError(
                f"search.space.{name}.choices {entry['choices']} are all below "
                f"{floor.sparsity:.4f} ({floor.because})"
            )
        entry["choices"] = kept
        return [f"{name} choices below {floor.sparsity:.4f} left out: {kept}"]
    low, high = float(entry["low"]), float(entry["high"])
    entry["low"] = max(low, round(floor.sparsity, 6))
    entry["high"] = min(max(high, entry["low"]), cap)
    if entry["low"] == low and entry["high"] == high:
        return []
    return [f"{name} sampled in [{entry['low']}, {entry['high']}] ({floor.because})"]


def _nm_misfits(cfg: DictConfig, patterns: list[str]) -> dict[str, str]:
    """N:M patterns that some pruned layer of the model cannot take, each with the reason."""
    from lightning_prune.pruning.granularity import NM
    from lightning_prune.pruning.selection import select_params
    from lightning_prune.train import build_model

    include, exclude = _pruning_option(cfg, "include"), _pruning_option(cfg, "exclude")
    include = [include] if isinstance(include, str) else list(include)
    exclude = [exclude] if isinstance(exclude, str) else list(exclude)
    params = select_params(build_model(cfg), include, exclude)
    misfits = {}
    for pattern in patterns:
        try:
            NM(str(pattern)).check(params)
        except ValueError as err:
            misfits[str(pattern)] = str(err).split(";")[0]
    return misfits


def _narrow_nm_to_model(cfg: DictConfig, space: dict) -> list[str]:
    """Leave out the N:M patterns (and `n:m`) that a pruned layer of the model cannot take."""
    g_name, g_entry = _entry(space, "pruning.granularity")
    offered = list(g_entry["choices"]) if g_name else [_fixed(cfg, "granularity", space)]
    if "n:m" not in offered:
        return []
    nm_name, nm_entry = _entry(space, "pruning.nm")
    patterns = list(nm_entry["choices"]) if nm_name else [_fixed(cfg, "nm", space)]
    misfits = _nm_misfits(cfg, patterns)
    if not misfits:
        return []
    fitting = [p for p in patterns if str(p) not in misfits]
    reasons = "; ".join(misfits.values())
    if fitting:
        nm_entry["choices"] = fitting
        return [f"n:m patterns that do not fit the model left out ({reasons}): searching {fitting}"]
    if not g_name or offered == ["n:m"]:
        raise ConfigError(f"granularity n:m cannot prune this model: {reasons}")
    g_entry["choices"] = [g for g in offered if g != "n:m"]
    return [f"n:m left out: {reasons}"]


def shape_space(cfg: DictConfig) -> tuple[DictConfig, list[str]]:
    """A copy of `cfg` whose `search.space` holds only what can meet the demand and fits the
    model, and one line per change (printed at the start of the search and kept with the
    study)."""
    floor = sparsity_floor(cfg)
    slow = dense_too_slow(cfg)
    shaped = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    space = OmegaConf.to_container(shaped.search.get("space") or {}, resolve=True)
    fit_notes = _narrow_nm_to_model(shaped, space)
    if floor is None and slow is None:
        if not fit_notes:
            return cfg, []
        shaped.search.space = space
        return shaped, fit_notes
    granularities, notes = _narrow_granularities(shaped, space, floor, slow)
    notes = fit_notes + notes
    if floor is not None:
        notes += _narrow_target(shaped, space, floor, granularities)
    shaped.search.space = space
    return shaped, notes
