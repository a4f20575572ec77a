"""Composing the run configuration from the packaged `conf/` with Hydra, and checking it."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A bad override or value, found before any training starts."""


def conf_dir() -> Path:
    """The folder of the packaged YAML config groups (works installed or editable)."""
    return Path(str(files("lightning_prune.conf")))


def config_groups() -> dict[str, list[str]]:
    """Config groups and their options, e.g. {"model": ["lenet300", "lenet5", ...]}."""
    root = conf_dir()
    return {
        group.name: sorted(p.stem for p in group.glob("*.yaml"))
        for group in sorted(root.iterdir())
        if group.is_dir() and any(group.glob("*.yaml"))
    }


def load_preset(group: str, name: str) -> DictConfig:
    """One option of a config group as Hydra composes it, its `defaults` (base) resolved.

    For code that reads a preset on its own rather than inside the whole config, e.g.
    `instantiate(load_preset("pruning", "dns"))`; a plain `OmegaConf.load` of the file
    would miss what the preset inherits.
    """
    if name not in config_groups().get(group, []):
        raise ConfigError(f"no preset {group}/{name}; options: {config_groups().get(group)}")
    composed = _compose([], f"{group}/{name}")  # placed under its group's key, as in a run
    return composed.get(group) or OmegaConf.create({})


def _compose(overrides: list[str], config_name: str) -> DictConfig:
    if GlobalHydra.instance().is_initialized():  # inside a `hydra.main` job (hydra_app.py)
        return compose(config_name=config_name, overrides=overrides)
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        return compose(config_name=config_name, overrides=overrides)


def _is_group_choice(override: str, groups: dict[str, list[str]]) -> bool:
    key = override.split("=", 1)[0].lstrip("+~")
    return key in groups


def _leaves(cfg: DictConfig, prefix: str = ""):
    for key in cfg:
        node = cfg._get_node(key)
        path = f"{prefix}{key}"
        if isinstance(node, DictConfig):
            yield from _leaves(node, path + ".")
        elif not isinstance(node, ListConfig) and not node._is_interpolation():
            yield path, node._value()


def _check_types(base: DictConfig, cfg: DictConfig) -> None:
    """A value replacing a number or a flag must be one too: `trainer.max_epochs=ten` fails."""
    for path, default in _leaves(base):
        value = OmegaConf.select(cfg, path, throw_on_missing=False)
        if default is None or value is None:
            continue
        wanted = type(default)
        ok = isinstance(value, wanted)
        if wanted is float:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        elif wanted is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        if not ok:
            raise ConfigError(
                f"{path} must be {wanted.__name__}, got {value!r} (default {default!r})"
            )


def _check_top_level(base: DictConfig, cfg: DictConfig, overrides: list[str]) -> None:
    """`+key=value` may add keys inside a group (`+trainer.max_steps=100`), but a new top-level
    key is read by no command: a typo there would otherwise pass silently."""
    for key in cfg:
        if key in base:
            continue
        added = [o for o in overrides if o.lstrip("+").split("=", 1)[0].split(".")[0] == key]
        shown = added[0] if added else str(key)
        raise ConfigError(
            f"bad override: {shown} adds the top-level key {key!r}, which no command reads; "
            f"top-level keys: {', '.join(str(k) for k in base)}"
        )


def load_config(overrides: list[str] | None = None, config_name: str = "config") -> DictConfig:
    """Compose `conf/<config_name>.yaml` with Hydra overrides; raise ConfigError when bad."""
    overrides = list(overrides or [])
    groups = config_groups()
    try:
        cfg = _compose(overrides, config_name)
        base = _compose([o for o in overrides if _is_group_choice(o, groups)], config_name)
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as err:
        lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
        message = " ".join(lines).split(" Config search path")[0]
        message = message.replace("To append to your config use", "No such key; to add one use")
        choices = "; ".join(f"{group}: {', '.join(opts)}" for group, opts in groups.items())
        hint = f" Config groups and options: {choices}"
        raise ConfigError(f"bad override: {message.rstrip('.')}.{hint}") from None
    _check_top_level(base, cfg, overrides)
    _check_types(base, cfg)
    from lightning_prune.targets import allow_targets  # it builds on ConfigError, defined here

    allow_targets(cfg)  # a bad pattern fails now, not when a file is loaded
    return cfg
