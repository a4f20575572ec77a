"""Exclusive file locks among the processes of one machine, where a shared file needs them.

`filelock` (a dependency of torch) replaces a hand-made `fcntl.flock`: the same kernel lock on
POSIX, `msvcrt` on Windows, and a soft lock where a filesystem has no flock. The `*.lock` files
stay beside the shared file on purpose: deleting one that another process waits on breaks it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock
from lightning_prune.search.contract import parse_storage

from lightning_prune import tracking


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """An exclusive lock on `path` among this machine's processes (created if missing); it is
    released when its holder exits, even killed."""
    with FileLock(path):
        yield


@contextlib.contextmanager
def ask_lock(storage_url: str) -> Iterator[None]:
    """Serialise count-then-ask among local processes sharing a journal file."""
    location = parse_storage(storage_url)
    if location.kind != "journal":
        yield
        return
    with file_lock(f"{location.path}.ask.lock"):
        yield


@contextlib.contextmanager
def store_init_lock(tracking_uri: str) -> Iterator[None]:
    """A lock beside a local MLflow SQLite store while it is created and migrated."""
    path = tracking.sqlite_file(tracking_uri)
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(f"{path}.init.lock"):
        yield
