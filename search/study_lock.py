"""A lock per study shared by every process and machine that opens it through one storage.

It makes "read the study's parent run, create one if there is none" atomic, so searches
started together on one study end with exactly one parent run. A database server holds the
lock for a connection (PostgreSQL advisory lock, MySQL GET_LOCK); a local storage file gets
a file lock beside it. Either is released when its holder dies, so a killed process never
blocks the others.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

import sqlalchemy
from lightning_prune.search.contract import parse_storage
from lightning_prune.search.locks import file_lock

SERVER_LOCK_TIMEOUT_S = 600


def _key(study_name: str) -> str:
    return f"lightning_prune.study:{study_name}"


def _statements(dialect: str, key: str) -> tuple[str, str, dict]:
    """SQL taking and releasing a connection-held named lock on this server."""
    digest = hashlib.sha256(key.encode()).digest()
    if dialect == "postgresql":
        number = {"k": int.from_bytes(digest[:8], "big", signed=True)}
        return "SELECT pg_advisory_lock(:k)", "SELECT pg_advisory_unlock(:k)", number
    # MySQL and MariaDB (names up to 64 characters): 1 when taken, 0 after the timeout
    name = {"k": digest.hex()[:64]}
    return f"SELECT GET_LOCK(:k, {SERVER_LOCK_TIMEOUT_S})", "SELECT RELEASE_LOCK(:k)", name


@contextlib.contextmanager
def _server_lock(url: str, key: str) -> Iterator[None]:
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    take, release, args = _statements(engine.dialect.name, key)
    try:
        with engine.connect() as conn:
            if conn.execute(sqlalchemy.text(take), args).scalar() == 0:
                raise TimeoutError(f"no lock on {key!r} after {SERVER_LOCK_TIMEOUT_S}s")
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text(release), args)
                conn.commit()
    finally:
        engine.dispose()


@contextlib.contextmanager
def study_lock(storage_url: str, study_name: str) -> Iterator[None]:
    """Hold the lock of `study_name` on `storage_url` (a no-op for in-memory SQLite)."""
    location = parse_storage(storage_url)
    if location.kind == "rdb":
        with _server_lock(location.url, _key(study_name)):
            yield
    elif location.path is None:
        yield
    else:
        location.path.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(f"{location.path}.study.lock"):
            yield
