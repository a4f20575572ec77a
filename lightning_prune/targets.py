"""Which `_target_`s may be built from a config that came from a file or a database.

A checkpoint, an ensemble file or a study's stored config names the code Hydra runs
(`_target_`), and `torch.load(weights_only=True)` does not stop a `_target_` of
`shutil.copyfile`. So every `_target_` in such a config, nested ones included (Hydra
instantiates recursively), must be on an allow list before Hydra is called: the
project's own models, data modules, pruning and gating callbacks, plus what the user names in
`allow_targets` (config) or `allow=` (Python).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable
from fnmatch import fnmatchcase
from typing import Any

from hydra._internal.utils import _locate  # the lookup instantiate itself does; no logging
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from lightning_prune.config import ConfigError

DEFAULT_TARGETS = (
    "lightning_prune.models.Classifier",
    "lightning_prune.data.FashionMNISTDataModule",
    "lightning_prune.data.SyntheticDataModule",
    "lightning_prune.pruning.AdaptivePruning",
    "lightning_prune.dynamic.DynamicGating",
)
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_TARGET = re.compile(rf"{_NAME}(\.{_NAME})*")
_PATTERN = re.compile(r"[A-Za-z0-9_*?]+(\.[A-Za-z0-9_*?]+)*")
_CONVERT = ("none", "partial", "object", "all")


class UntrustedTargetError(ConfigError):
    """A `_target_` (or a Hydra key beside it) that the allow list does not admit."""


def _as_list(allow: str | Iterable[str] | None, where: str) -> list[str]:
    if allow is None:
        return []
    items = [allow] if isinstance(allow, str) else list(allow)
    for item in items:
        if not isinstance(item, str) or not _PATTERN.fullmatch(item):
            raise ConfigError(f"{where}: {item!r} is not a dotted name or pattern (e.g. my_pkg.*)")
    return items


def allow_targets(cfg: DictConfig | dict | None) -> list[str]:
    """The user's `allow_targets` of a composed config, checked (a single string is a list)."""
    value = cfg.get("allow_targets") if cfg is not None else None
    if isinstance(value, ListConfig):
        value = OmegaConf.to_container(value, resolve=True)
    if value is not None and not isinstance(value, str | list | tuple):
        raise ConfigError(f"allow_targets must be a list of patterns, got {value!r}")
    return _as_list(value, "allow_targets")


def _prefix(where: str) -> str:
    return f"{where}: " if where else ""


def _refuse(where: str, path: str, target: Any, why: str, name: str | None = None):
    """The error, saying how to allow `name` (default: the target) when it can be allowed."""
    at = "" if path == "_target_" else f" at {path}"
    message = f"{_prefix(where)}refused _target_ {target!r}{at}: {why}"
    if name:
        message += (f"; if you trust where it came from, allow it with allow_targets=[{name}] "
                    f"(command line) or allow=[{name!r}] (Python); patterns like "
                    f"{name.split('.')[0]}.* work too")  # fmt: skip
    return UntrustedTargetError(message)


def _special_keys(node: dict, path: str, where: str) -> None:
    """Hydra's own keys must hold what Hydra expects, so none changes what runs."""
    for key in ("_partial_", "_recursive_"):
        if key in node and not isinstance(node[key], bool):
            raise UntrustedTargetError(f"{_prefix(where)}{path}{key} must be true or false")
    convert = node.get("_convert_", "none")
    if not isinstance(convert, str) or convert.lower() not in _CONVERT:
        raise UntrustedTargetError(f"{_prefix(where)}{path}_convert_ must be one of {_CONVERT}")
    if "_args_" in node and not isinstance(node["_args_"], list | tuple):
        raise UntrustedTargetError(f"{_prefix(where)}{path}_args_ must be a list")


def _walk(node: Any, path: str, where: str, found: list[tuple[str, str]]) -> None:
    if isinstance(node, str) and "${" in node:
        at = path.rstrip(".") or "config"
        raise UntrustedTargetError(f"{_prefix(where)}{at} holds an interpolation ({node!r}); "
                                   "stored configs are saved resolved")  # fmt: skip
    if isinstance(node, list | tuple):
        for i, item in enumerate(node):
            _walk(item, f"{path.rstrip('.')}[{i}].", where, found)
    if not isinstance(node, dict):
        return
    _special_keys(node, path, where)
    if "_target_" in node:
        target = node["_target_"]
        if not isinstance(target, str) or not _TARGET.fullmatch(target):
            raise _refuse(where, f"{path}_target_", target, "not a plain dotted name")
        if any(part.startswith("__") for part in target.split(".")):
            raise _refuse(where, f"{path}_target_", target, "dunder names are never built")
        found.append((f"{path}_target_", target))
    for key, value in node.items():
        _walk(value, f"{path}{key}.", where, found)


def _home(obj: Any) -> str | None:
    """Where a class or Python function is defined, e.g. `shutil.copyfile`; None otherwise."""
    if not (inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismethod(obj)):
        return None
    return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"


def check_targets(
    config: Any, allow: str | Iterable[str] | None = None, *, where: str = "config"
) -> Any:
    """Refuse any `_target_` not allowed; return the config as plain, resolved containers.

    A target must match a pattern (fnmatch on the dotted path) of `DEFAULT_TARGETS` +
    `allow`, and the object it names must be a class or function defined in the same
    top-level package (or itself allowed): `my_pkg.*` does not reach `my_pkg.os.system`.
    Nothing is imported until every target in the config has matched a pattern.
    """
    patterns = [*DEFAULT_TARGETS, *_as_list(allow, "allow")]
    if isinstance(config, DictConfig | ListConfig):
        config = OmegaConf.to_container(config, resolve=True)
    found: list[tuple[str, str]] = []
    _walk(config, "", where, found)
    for path, target in found:
        if not any(fnmatchcase(target, p) for p in patterns):
            raise _refuse(where, path, target, "not on the allow list", target)
    for path, target in found:
        try:
            home = _home(_locate(target))
        except Exception as err:  # an allowed module that fails to import, or a missing name
            reason = " ".join(str(err).split())
            raise ConfigError(
                f"{_prefix(where)}cannot import _target_ {target!r}: {reason}"
            ) from None
        if home is None:
            raise _refuse(where, path, target, "it names neither a class nor a Python function")
        same_package = home.split(".")[0] == target.split(".")[0]
        if not same_package and not any(fnmatchcase(home, p) for p in patterns):
            raise _refuse(where, path, target, f"it is {home}, from another package", home)
    return config


def safe_instantiate(
    config: Any, allow: str | Iterable[str] | None = None, *, where: str = "config"
) -> Any:
    """`hydra.utils.instantiate`, after `check_targets` has admitted every `_target_`."""
    return instantiate(check_targets(config, allow, where=where))
