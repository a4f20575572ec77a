"""The search space from `cfg.search.space`: validated up front, suggested per trial.

Each entry names one hyperparameter and the config key (`target`) it overrides, so the
space is plain YAML and every range can be changed from the command line. Validation runs
before the first trial, so a typo never costs a study.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, replace
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf

from lightning_prune.config import ConfigError

FIELDS = {"target", "choices", "low", "high", "log", "step", "when"}
CALLBACK = "lightning_prune.pruning.AdaptivePruning"
GATING = "lightning_prune.dynamic.DynamicGating"
# target `dynamic`: which pruning a trial uses (static masks, per-input gates, or both)
MODES = ("static", "dynamic", "both")


@dataclass(frozen=True)
class Param:
    """One searched hyperparameter: `name` in Optuna, `target` in the config."""

    name: str
    target: str
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    when: tuple[tuple[str, tuple], ...] = ()

    @property
    def is_int(self) -> bool:
        return self.choices is None and all(
            isinstance(v, int) and not isinstance(v, bool) for v in (self.low, self.high)
        )

    def active(self, chosen: dict[str, Any]) -> bool:
        """Conditional parameters exist only when their parents took an allowed value."""
        return all(name in chosen and chosen[name] in allowed for name, allowed in self.when)

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.is_int:
            step = int(self.step) if self.step else 1
            return trial.suggest_int(self.name, self.low, self.high, step=step, log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)


def _fail(name: str, message: str) -> None:
    raise ConfigError(f"search.space.{name}: {message}")


def _callback_arguments(group: str) -> set[str] | None:
    """Keyword arguments of the group's callback (None while it is not importable)."""
    try:
        if group == "pruning":
            from lightning_prune.pruning import AdaptivePruning as callback
        else:
            from lightning_prune.dynamic import DynamicGating as callback
    except ImportError:
        return None
    return set(inspect.signature(callback).parameters)


def _check_target(name: str, target: str, cfg: DictConfig, choices: Any = None) -> None:
    if not isinstance(target, str) or not target:
        _fail(name, "needs `target`, the config key it sets, e.g. target: pruning.criterion")
    if target == "dynamic":
        if not isinstance(choices, list) or not choices or not set(choices) <= set(MODES):
            _fail(name, f"target 'dynamic' takes choices from {list(MODES)}, got {choices!r}")
        return
    group, _, key = target.partition(".")
    if group in ("pruning", "dynamic"):  # a config without the group: ask the callback
        allowed = _callback_arguments(group)
        if allowed is not None and key not in allowed:
            owner = "AdaptivePruning" if group == "pruning" else "DynamicGating"
            _fail(name, f"unknown parameter {target!r}; {owner} takes {sorted(allowed)}")
        return
    if group == "search" or OmegaConf.select(cfg, target, default="__missing__") == "__missing__":
        _fail(name, f"unknown parameter {target!r}: no such config key")


def _numeric(name: str, entry: dict[str, Any]) -> None:
    low, high = entry.get("low"), entry.get("high")
    for label, value in (("low", low), ("high", high)):
        if not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(value):
            _fail(name, f"{label} must be a number, got {value!r}")
    if low > high:
        _fail(name, f"low ({low}) > high ({high})")
    if entry.get("log") and low <= 0:
        _fail(name, f"log range needs low > 0, got low={low}")
    step = entry.get("step")
    if step is not None and (not isinstance(step, int | float) or step <= 0):
        _fail(name, f"step must be a positive number, got {step!r}")
    if step is not None and entry.get("log"):
        _fail(name, "step and log cannot be combined")


def _parse_entry(name: str, entry: Any, cfg: DictConfig) -> Param:
    if not isinstance(entry, dict):
        _fail(
            name,
            f"must be a mapping like {{target: model.lr, low: 1e-4, high: 1e-2}}, got {entry!r}",
        )
    unknown = set(entry) - FIELDS
    if unknown:
        _fail(name, f"unknown field(s) {sorted(unknown)}; allowed: {sorted(FIELDS)}")
    _check_target(name, entry.get("target"), cfg, entry.get("choices"))
    choices = entry.get("choices")
    if choices is not None:
        if not isinstance(choices, list) or not choices:
            _fail(name, f"choices must be a non-empty list, got {choices!r}")
        if {"low", "high", "log", "step"} & set(entry):
            _fail(name, "give either choices or low/high, not both")
    else:
        _numeric(name, entry)
    when = entry.get("when") or {}
    if not isinstance(when, dict):
        _fail(name, f"when must map parameter names to allowed values, got {when!r}")
    conditions = tuple(
        (parent, tuple(v if isinstance(v, list) else [v])) for parent, v in when.items()
    )
    return Param(
        name=name,
        target=entry["target"],
        choices=tuple(choices) if choices is not None else None,
        low=entry.get("low"),
        high=entry.get("high"),
        log=bool(entry.get("log", False)),
        step=entry.get("step"),
        when=conditions,
    )


def parse_space(cfg: DictConfig) -> list[Param]:
    """Validate `cfg.search.space` against the composed config; raise ConfigError naming
    the entry. Parameters come back in an order where parents precede their children."""
    raw = OmegaConf.to_container(cfg.search.get("space") or {}, resolve=True)
    if not isinstance(raw, dict):
        raise ConfigError(f"search.space must be a mapping of parameters, got {raw!r}")
    params = _static_only_when_masked(
        [_parse_entry(str(name), entry, cfg) for name, entry in raw.items()]
    )
    names = {p.name for p in params}
    targets: dict[str, str] = {}
    for p in params:
        if p.target in targets:
            _fail(p.name, f"target {p.target!r} is already set by {targets[p.target]!r}")
        targets[p.target] = p.name
        for parent, _ in p.when:
            if parent not in names:
                _fail(p.name, f"`when` refers to unknown parameter {parent!r}")
    return _ordered(params)


def _static_only_when_masked(params: list[Param]) -> list[Param]:
    """Pruning parameters exist only in trials that keep static masks: a `dynamic` trial
    (gates alone) has no AdaptivePruning, so sampling them would only blur the sampler."""
    modes = [p for p in params if p.target == "dynamic"]
    if not modes:
        return params
    mode = modes[0]
    masked = tuple(c for c in mode.choices or () if c != "dynamic")
    out = []
    for p in params:
        if p.target.startswith("pruning.") and all(parent != mode.name for parent, _ in p.when):
            p = replace(p, when=(*p.when, (mode.name, masked)))
        out.append(p)
    return out


def _ordered(params: list[Param]) -> list[Param]:
    done: list[Param] = []
    pending = list(params)
    while pending:
        ready = [p for p in pending if all(c in {d.name for d in done} for c, _ in p.when)]
        if not ready:
            _fail(pending[0].name, "`when` conditions form a cycle")
        done.extend(ready)
        pending = [p for p in pending if p not in ready]
    return done


def suggest(trial: optuna.Trial, params: list[Param]) -> dict[str, Any]:
    """Ask the trial for every active parameter; return {name: value}."""
    chosen: dict[str, Any] = {}
    for param in params:
        if param.active(chosen):
            chosen[param.name] = param.suggest(trial)
    return chosen


def trial_overrides(params: list[Param], chosen: dict[str, Any]) -> dict[str, Any]:
    """{config key: value} for the chosen parameters."""
    return {p.target: chosen[p.name] for p in params if p.name in chosen}


def gating_defaults() -> dict[str, Any]:
    """The `dynamic=gated` options (conf/dynamic/gated.yaml), for a trial that gates in a
    study composed without them."""
    from lightning_prune.config import conf_dir

    return dict(OmegaConf.to_container(OmegaConf.load(conf_dir() / "dynamic" / "gated.yaml")))


def apply_overrides(cfg: DictConfig, values: dict[str, Any]) -> DictConfig:
    """A copy of `cfg` with the trial's values set; a dense `pruning` group becomes the
    AdaptivePruning callback so pruning parameters have somewhere to go. A `dynamic` mode
    keeps the static masks (`pruning`), the per-input gates (`dynamic`) or both."""
    trial_cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    values = dict(values)
    mode = values.pop("dynamic", None)
    if mode == "dynamic":  # gates alone: no static masks, so no pruning parameters either
        values = {k: v for k, v in values.items() if not k.startswith("pruning.")}
        trial_cfg.pruning = {}
    gating_keys = [k for k in values if k.startswith("dynamic.")]
    if mode == "static":
        trial_cfg.dynamic = {}
        values = {k: v for k, v in values.items() if k not in gating_keys}
    elif (mode in ("dynamic", "both") or gating_keys) and "_target_" not in trial_cfg.get(
        "dynamic", {}
    ):
        trial_cfg.dynamic = gating_defaults()
    pruning_keys = [k for k in values if k.startswith("pruning.")]
    if pruning_keys and "_target_" not in trial_cfg.get("pruning", {}):
        trial_cfg.pruning = {"_target_": CALLBACK}
    if "_target_" in trial_cfg.get("pruning", {}):
        trial_cfg.pruning.verbose = False
    for key, value in values.items():
        OmegaConf.update(trial_cfg, key, value, force_add=True)
    return trial_cfg
