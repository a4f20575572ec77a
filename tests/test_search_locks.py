"""The local file lock: exclusive among processes and threads, released when its holder dies."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
from filelock import FileLock, Timeout
from lightning_prune.search.locks import file_lock

HOLDER = """
import sys, time
from lightning_prune.search.locks import file_lock
with file_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_killed_holder_releases_the_lock(tmp_path):
    path = tmp_path / "store.db.study.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(Timeout):
            FileLock(path, timeout=0.2).acquire()
    finally:
        holder.kill()
        holder.wait(30)
    with file_lock(path):  # taken at once: the kernel dropped the dead holder's lock
        pass


def test_threads_wait_for_each_other(tmp_path):
    path, order, held = tmp_path / "journal.log.ask.lock", [], threading.Event()

    def first():
        with file_lock(path):
            held.set()
            time.sleep(0.5)
            order.append("first released")

    thread = threading.Thread(target=first)
    thread.start()
    held.wait(30)
    with file_lock(path):
        order.append("second acquired")
    thread.join()
    assert order == ["first released", "second acquired"]
