"""Study storages: what a `search.storage` URL names (`parse_storage`, rules there), and
opening it (`make_storage`). Server databases are opened without a connection pool, and
processes started together on an empty database create its schema once (`_create_rdb`).
"""

from __future__ import annotations

import contextlib
import random
import re
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from optuna.exceptions import ExperimentalWarning
from optuna.storages import (
    BaseStorage,
    JournalStorage,
    RDBStorage,
    RetryHeartbeatStaleTrialCallback,
)
from optuna.storages.journal import JournalFileBackend
from sqlalchemy.exc import IntegrityError, InternalError, ProgrammingError
from sqlalchemy.pool import NullPool

from lightning_prune.config import ConfigError

DEFAULT_STORAGE = "sqlite:///runs/optuna.db"
SERVER_SCHEMES = ("postgresql", "postgres", "mysql")  # dialects; `+driver` may follow
PSYCOPG2 = "postgresql+psycopg2"
StorageKind = Literal["journal", "sqlite", "rdb"]
SCHEMA_ATTEMPTS = 6
SCHEMA_RACE = re.compile(r"already exists|duplicate key|unique constraint|concurrently", re.I)
_JOURNAL = re.compile(r"journal:(?P<rest>.*)", re.S)
_EXAMPLES = (
    "use sqlite:///runs/optuna.db, journal://runs/optuna.journal (journal:///abs/path.journal "
    "for an absolute path) or postgresql://user:password@host:port/db"
)


@dataclass(frozen=True)
class StorageURL:
    """A parsed `search.storage`: the URL to open, its kind and, for a local one, its file."""

    url: str  # as opened: postgres:// and postgresql:// rewritten to postgresql+psycopg2://
    kind: StorageKind
    path: Path | None  # None for a database server or an in-memory SQLite


def _journal_path(rest: str) -> Path:
    """`//` after `journal:` introduces the path as in a URL; one leading `/` is absolute."""
    if rest[:2] == "//":
        rest = rest[2:]
    if rest[:1] == "/":
        rest = "/" + rest.lstrip("/")
    if not rest.strip("/"):
        raise ConfigError(f"search.storage=journal:{rest} names no file; {_EXAMPLES}")
    return Path(rest)


def _server_url(scheme: str, rest: str) -> str:
    dialect, _, driver = scheme.partition("+")
    if dialect in ("postgresql", "postgres") and driver in ("", "psycopg2"):
        return f"{PSYCOPG2}://{rest}"
    if dialect == "postgres":
        return f"postgresql+{driver}://{rest}"
    return f"{scheme}://{rest}"


def parse_storage(url: str) -> StorageURL:
    """What `url` names; ConfigError for anything else.

    - `sqlite:///runs/optuna.db` is relative to the working directory, `sqlite:////abs/o.db`
      absolute (SQLAlchemy's rule). One process.
    - `journal:///abs/optuna.journal` is absolute, as in a URL (`journal:////abs/...` means
      the same); `journal://runs/optuna.journal`, `journal:runs/optuna.journal` and a bare
      path ending in `.journal` are relative. Several processes on one machine.
    - `postgresql://`, `postgres://` and `postgres+psycopg2://` open with psycopg2 (installed
      with this package): `.url` is `postgresql+psycopg2://` and the rest of the URL as given.
      SQLAlchemy 2.1 would pick the psycopg 3 driver, which is not installed. A URL naming
      another driver (`postgresql+psycopg://`, `mysql+pymysql://`) is kept. Many machines.
    """
    journal = _JOURNAL.fullmatch(url)
    if journal:
        return StorageURL(url, "journal", _journal_path(journal["rest"]))
    if "://" not in url and url.endswith(".journal"):
        return StorageURL(url, "journal", Path(url))
    scheme, _, rest = url.partition("://")
    dialect = scheme.split("+", 1)[0]
    if dialect == "sqlite":
        file = rest.removeprefix("/").split("?", 1)[0]
        return StorageURL(url, "sqlite", Path(file) if file not in ("", ":memory:") else None)
    if dialect in SERVER_SCHEMES and rest:
        return StorageURL(_server_url(scheme, rest), "rdb", None)
    raise ConfigError(f"search.storage={url!r} is not a storage URL; {_EXAMPLES}")


def check_storage(url: str, workers: int) -> None:
    """Fail before any trial when the storage cannot take `workers` parallel writers."""
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"search.workers must be an integer >= 1, got {workers!r}")
    if workers > 1 and parse_storage(url).kind == "sqlite":
        raise ConfigError(
            f"search.workers={workers} needs a storage safe for parallel writers, not SQLite "
            f"({url}); use search.storage=journal://runs/optuna.journal on one machine or "
            "search.storage=postgresql://... across machines"
        )


def has_heartbeats(url: str, heartbeat_interval: int | None) -> bool:
    """Database storages beat when asked to; a journal file has no heartbeats."""
    return parse_storage(url).kind != "journal" and bool(heartbeat_interval)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_heartbeats(heartbeat_interval: Any, grace_period: Any, max_retry: Any) -> None:
    """Fail before any trial on settings Optuna rejects only once the study opens, or that
    would fail live trials as stale (a grace period no longer than one beat)."""
    beat = heartbeat_interval
    if beat is not None and (not _is_int(beat) or beat < 1):
        raise ConfigError(
            f"search.heartbeat_interval must be an integer >= 1 or null (no heartbeats), "
            f"got {beat!r}"
        )
    least = beat or 0
    if not _is_int(grace_period) or grace_period <= least:
        where = f"search.heartbeat_interval ({least})" if least else "0"
        raise ConfigError(f"search.grace_period must be an integer > {where}, got {grace_period!r}")
    if not _is_int(max_retry) or max_retry < 0:
        raise ConfigError(f"search.max_retry must be an integer >= 0, got {max_retry!r}")


@contextlib.contextmanager
def quiet_experimental() -> Iterator[None]:
    """Heartbeats and retries are "experimental" in Optuna since 2.x; we rely on them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        yield


def engine_kwargs(location: StorageURL) -> dict[str, Any]:
    """SQLAlchemy engine options. A server gets no pool: a process holds a connection only
    while a transaction runs (at most two at once: its trial and its heartbeat thread), so
    idle and waiting workers hold none and 100 workers fit PostgreSQL's default
    `max_connections=100`. Each transaction opens a connection (~2 ms on a LAN; put PgBouncer
    or Optuna's gRPC proxy in front when that matters). SQLite waits up to 60 s on a lock."""
    if location.kind == "sqlite":
        return {"connect_args": {"timeout": 60}}
    return {"poolclass": NullPool}


def _create_rdb(location: StorageURL, **kwargs: Any) -> RDBStorage:
    """RDBStorage, retried while another process creates the same empty database's schema
    (both see no tables; the slower one fails on a duplicate table, type or version row)."""
    for attempt in range(SCHEMA_ATTEMPTS):
        try:
            return RDBStorage(location.url, engine_kwargs=engine_kwargs(location), **kwargs)
        except (IntegrityError, ProgrammingError, InternalError) as err:
            if attempt == SCHEMA_ATTEMPTS - 1 or not SCHEMA_RACE.search(str(err)):
                raise
            time.sleep(0.2 * 2**attempt * (0.5 + random.random()))
        except ImportError as err:
            raise ConfigError(
                f"search.storage: no database driver for {location.url.split('://')[0]!r} "
                f"({err.__cause__ or err}); install it or name one that is installed, e.g. "
                "postgresql+psycopg2://..."
            ) from None
    raise AssertionError("unreachable")


def make_storage(
    url: str,
    heartbeat_interval: int | None = 10,
    grace_period: int | None = 30,
    max_retry: int | None = 2,
) -> BaseStorage:
    """Open (creating when needed) the storage at `url`; a database storage with heartbeats
    fails a dead worker's trial after `grace_period` seconds and queues a copy."""
    location = parse_storage(url)
    if location.kind == "journal":
        location.path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(location.path)))
    if location.kind == "sqlite" and location.path is not None:
        location.path.parent.mkdir(parents=True, exist_ok=True)
    heartbeat = heartbeat_interval or None
    with quiet_experimental():
        retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retry) if heartbeat else None
        return _create_rdb(
            location,
            heartbeat_interval=heartbeat,
            grace_period=grace_period if heartbeat else None,
            heartbeat_stale_trial_callback=retry,
        )
