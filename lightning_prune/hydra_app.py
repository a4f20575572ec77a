"""`lightning-prune <command> ...` as a Hydra application: `hydra.main` parses the rest, so
Hydra's own conventions work on every command -- multirun (`-m pruning=dns,auto seed=0,1`),
`--cfg job`, `--info`, `--help`, `hydra.run.dir=...`, `hydra.sweep.dir=...` and
`--shell-completion install=bash`.

Each job still composes its config with `lightning_prune.config.load_config` from the job's
overrides, so every check and error message is the same as without Hydra; a single run is
checked before Hydra starts, so bad input creates nothing. A failing job exits with its
command's code (a multirun stops there).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from hydra import main as hydra_main
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from lightning_prune.config import ConfigError, conf_dir, load_config

CFG_CHOICES = ("job", "hydra", "all")
MULTIRUN = ("-m", "--multirun")


def hydra_argv(rest: list[str]) -> list[str]:
    """Hydra's arguments from ours: a bare `--cfg` (print the config) means `--cfg job`. A
    word after it that is neither a choice nor an override (`--cfg jobb`) is a ConfigError,
    not Hydra's parse error of the override it would become."""
    out = []
    for i, arg in enumerate(rest):
        out.append(arg)
        following = rest[i + 1] if i + 1 < len(rest) else None
        if arg in ("--cfg", "-c") and following not in CFG_CHOICES:
            word = following is not None and not following.startswith(("-", "~"))
            if word and "=" not in following:
                raise ConfigError(f"{arg} takes job, hydra or all (alone: job), got {following!r}")
            out.append("job")
    return out


def plain_overrides(argv: list[str]) -> list[str]:
    """The config overrides among Hydra's arguments (flags and `hydra.*` settings aside)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("--cfg", "-c", "--package", "-p", "--config-name", "-cn", "--config-dir",
                   "-cd", "--shell-completion", "-sc", "--experimental-rerun", "--config-path",
                   "-cp", "--info", "-i"):  # fmt: skip
            skip = arg not in ("--shell-completion", "-sc", "--info", "-i")
            continue
        if arg.startswith("-") or arg.lstrip("+~").startswith(("hydra.", "hydra/")):
            continue
        out.append(arg)
    return out


def prints_config(argv: list[str]) -> bool:
    """`--cfg` alone among Hydra's printing flags: the config it prints is composed (and
    checked) as a run's would be."""
    others = ("--info", "-i", "--help", "-h", "--hydra-help", "--shell-completion", "-sc")
    return any(arg in ("--cfg", "-c") for arg in argv) and not any(
        arg in others or arg.startswith(("--info=", "--shell-completion=")) for arg in argv
    )


def prints_only(argv: list[str]) -> bool:
    """Hydra answers these itself (config, help, completion) and runs no job."""
    flags = ("--cfg", "-c", "--info", "-i", "--help", "-h", "--hydra-help",
             "--shell-completion", "-sc")  # fmt: skip
    return any(arg in flags or arg.startswith(("--info=", "--shell-completion=")) for arg in argv)


def complete(commands: list[str]) -> tuple[str, list[str]] | None:
    """Shell completion asks `lightning-prune -sc query=bash` with the typed line in
    COMP_LINE: the command word picks the command, and Hydra completes the rest of the line
    (None, after printing them, while the command itself is being typed)."""
    words = os.environ.get("COMP_LINE", "").split()
    typed = os.environ.get("COMP_LINE", "").endswith(" ")
    if len(words) < 2 or (len(words) == 2 and not typed):
        prefix = words[1] if len(words) == 2 else ""
        print(" ".join(c for c in commands if c.startswith(prefix)))
        return None
    command = words[1]
    os.environ["COMP_LINE"] = " ".join([words[0], *words[2:]]) + (" " if typed else "")
    return command, ["--shell-completion", "query=bash"]


def run(
    command: str, rest: list[str], job: Callable[[list[str]], int], full_errors: bool = False
) -> int:
    """Run `job` (a command taking its overrides, composing and checking them, returning an
    exit code) under `hydra.main`; a non-zero code leaves as `SystemExit`, as Hydra jobs fail.
    A single run is checked before Hydra starts: bad input creates nothing. `full_errors`:
    an unexpected error leaves with its traceback (Hydra would print a shortened one)."""
    argv = hydra_argv(rest)
    checked = not prints_only(argv) or prints_config(argv)
    if checked and not any(arg in MULTIRUN for arg in argv):
        load_config(plain_overrides(argv))  # raises ConfigError: the caller's one line

    def task(_cfg: DictConfig) -> None:
        code = job(list(HydraConfig.get().overrides.task))
        if code:
            raise SystemExit(code)

    task.__name__ = command  # Hydra names the job (and its log and sweep folders) after it
    app = hydra_main(config_path=str(conf_dir()), config_name="config", version_base=None)(task)
    saved, saved_env = sys.argv, os.environ.get("HYDRA_FULL_ERROR")
    root = logging.getLogger()  # `--info` adds a root handler of its own: removed after
    saved_logging = root.handlers[:], root.level
    sys.argv = ["lightning-prune", *argv]
    if full_errors:
        os.environ["HYDRA_FULL_ERROR"] = "1"
    GlobalHydra.instance().clear()
    try:
        app()
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    finally:
        sys.argv = saved
        root.handlers[:], root.level = saved_logging
        if full_errors and saved_env is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        GlobalHydra.instance().clear()
    return 0
