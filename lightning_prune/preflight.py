"""Checks that need no training, run before anything is recorded.

A folder that cannot be written, a store that cannot be opened, a missing GPU or a corrupt
data file would otherwise surface as a traceback, sometimes after the whole run trained.
Each check raises `PreflightError` naming the option and what would work; nothing here
creates a file except the folder of a local MLflow store (as `tracking.prepare_store` does).
"""

from __future__ import annotations

import os
import re
import socket
import sqlite3
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from omegaconf import DictConfig, OmegaConf

from lightning_prune import tracking
from lightning_prune.config import ConfigError

SERVER_SCHEMES = ("postgresql", "postgres", "mysql", "mssql", "oracle")
CONNECT_TIMEOUT_S = 5
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class PreflightError(ConfigError):
    """Something an option names (folder, store, data, device) cannot be used; nothing ran."""


def first_line(err: BaseException | str) -> str:
    """The first line of a library's message (drivers add hints and URLs on later lines)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return (lines[0] if lines else type(err).__name__)[:400]


def one_line(err: BaseException | str) -> str:
    """All of our own message, its lines joined (every line of it matters)."""
    return " ".join(line.strip() for line in str(err).splitlines() if line.strip())


def check_name(value: Any, option: str) -> None:
    """A name that becomes a folder or file name must stay one path component."""
    if not isinstance(value, str) or not SAFE_NAME.fullmatch(value) or ".." in value:
        raise ConfigError(
            f"{option}={value!r} is not allowed: it names files under output_dir, so use 1-128 "
            "characters from A-Z a-z 0-9 . _ - starting with a letter or digit, without '..'"
        )


def check_folder(path: str | Path, option: str) -> None:
    """`path` exists as a writable folder or can be created (without creating it)."""
    path = Path(path).expanduser()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise PreflightError(f"{option}: cannot create {path}: {existing} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise PreflightError(
            f"{option}: cannot write in {existing} ({err.strerror or err}); choose a writable "
            "folder"
        ) from None


def check_sqlite_file(
    path: str | Path, option: str, shown: str, table: str = "", holder: str = ""
) -> None:
    """An existing SQLite file must open as a database and, when it has tables, hold `table`
    (the other tool's database would be migrated into a hybrid); its folder writable."""
    path = Path(path).expanduser()
    check_folder(path.parent, option)
    if not path.exists():
        return
    if not path.is_file():
        raise PreflightError(f"{option}={shown}: {path} is not a file")
    try:
        with sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True) as conn:
            rows = conn.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
        conn.close()
    except sqlite3.Error as err:
        raise PreflightError(
            f"{option}={shown}: {path} is not a readable SQLite database ({first_line(err)}); "
            "move it away or point the option at another file"
        ) from None
    tables = {name for (name,) in rows}
    if table and tables and table not in tables:
        raise PreflightError(
            f"{option}={shown}: {path} is a SQLite database but not {holder} (no {table!r} "
            "table); point the option at another file"
        )


def check_writable_file(path: str | Path, option: str, shown: str) -> None:
    """An existing file that will be written must not be read-only (root writes anyway)."""
    path = Path(path).expanduser()
    if path.is_file() and not os.access(path, os.W_OK):
        raise PreflightError(f"{option}={shown}: {path} is read-only; make it writable or "
                             "point the option at another file")  # fmt: skip


def check_database(url: str, option: str) -> None:
    """A database server (PostgreSQL, MySQL) answers within a few seconds."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError
    from sqlalchemy.pool import NullPool

    try:
        parsed = make_url(url)
    except ArgumentError as err:
        raise PreflightError(f"{option}: not a database URL ({first_line(err)})") from None
    shown = parsed.render_as_string(hide_password=True)
    try:
        engine = create_engine(
            parsed, poolclass=NullPool, connect_args={"connect_timeout": CONNECT_TIMEOUT_S}
        )
    except ImportError as err:
        hint = " (write postgresql+psycopg2://...)" if parsed.drivername == "postgresql" else ""
        raise PreflightError(
            f"{option}={shown}: no database driver for {parsed.drivername!r} "
            f"({first_line(err)}){hint}"
        ) from None
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as err:
        cause = getattr(err, "orig", None) or err
        raise PreflightError(
            f"{option}={shown}: cannot reach the database: {first_line(cause)}"
        ) from None
    finally:
        engine.dispose()


def _check_server(uri: str, option: str) -> None:
    parts = urlsplit(uri)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as err:
        raise PreflightError(
            f"{option}={uri}: no MLflow server answers at {parts.hostname}:{port} "
            f"({err.strerror or err}); start it or use a local store, sqlite:///runs/mlflow.db"
        ) from None


def check_tracking(uri: str, option: str = "tracking.uri") -> None:
    """The MLflow tracking store can be opened (a local store's folder is created here)."""
    parts = urlsplit(uri)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme == "sqlite" and (parts.netloc or not parts.path.strip("/")):
        raise ConfigError(  # sqlite://runs/x.db reads `runs` as a host; sqlite:// is in memory
            f"{option}={uri} is not a SQLite file URL; use sqlite:///relative/path.db or "
            "sqlite:////absolute/path.db (three slashes, then the path)"
        )
    path = tracking.sqlite_file(uri)
    if path is not None:
        check_folder(path.parent, option)
        try:
            tracking.prepare_store(uri)
        except OSError as err:
            raise PreflightError(f"{option}={uri}: cannot create its folder ({err})") from None
        check_sqlite_file(path, option, uri, "experiments", "an MLflow tracking store")
        check_writable_file(path, option, uri)
    elif scheme in ("http", "https"):
        _check_server(uri, option)
    elif scheme in SERVER_SCHEMES:
        check_database(uri, option)
    elif scheme in ("", "file") or len(scheme) == 1:  # a path (or a Windows drive letter)
        raise ConfigError(
            f"{option}={uri} is a folder store, which MLflow 3 no longer writes; use "
            "sqlite:///runs/mlflow.db or http://host:port"
        )


def check_trainer(trainer: DictConfig) -> None:
    """The run has a length, the accelerator exists here and Lightning accepts the trainer
    arguments."""
    import pytorch_lightning as pl
    import torch
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    for key in ("max_epochs", "max_steps"):  # 0 trains nothing yet records a run
        value = trainer.get(key)
        if value is None or (value == -1 and not isinstance(value, bool)):
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(
                f"trainer.{key} must be an integer >= 1 (or -1: no limit), got {value!r}"
            )
    accelerator = str(trainer.get("accelerator", "auto")).lower()
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    missing = {"cuda": not cuda, "gpu": not (cuda or mps), "mps": not mps}
    if missing.get(accelerator):
        raise PreflightError(
            f"trainer.accelerator={accelerator} needs a GPU, but torch finds none here "
            f"(torch {torch.__version__}, cuda available: {cuda}); use trainer.accelerator=cpu "
            "or auto"
        )
    kwargs = OmegaConf.to_container(trainer, resolve=True)
    try:
        pl.Trainer(**{**kwargs, "logger": False, "callbacks": [], "enable_progress_bar": False})
    except (MisconfigurationException, ImportError, TypeError, ValueError) as err:
        raise PreflightError(f"trainer: {first_line(err)}") from None


def check_data(datamodule: Any) -> None:
    """The data can be found and read: a missing folder or a corrupt file fails now."""
    from lightning_prune.data import DataFileError

    try:
        datamodule.prepare_data()
        check_files = getattr(datamodule, "check_files", None)
        if callable(check_files):
            check_files()
    except (OSError, DataFileError) as err:
        raise PreflightError(one_line(err)) from None
