"""Shared pieces of the search tests: tiny configs and a throwaway PostgreSQL server."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

PG_BIN = Path("/usr/lib/postgresql/15/bin")
# Synthetic data, 2 epochs, small trials: the tests check behaviour, not accuracy.
TINY = [
    "data=synthetic",
    "data.num_train=256",
    "data.num_val=64",
    "data.num_test=64",
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
    "search.progress=false",
    "search.pruner.n_startup_trials=2",
    "search.space.frequency.low=2",
    "search.space.frequency.high=8",
]


def tiny(tmp_path: Path, *extra: str) -> list[str]:
    """Overrides keeping every file of a run under `tmp_path`."""
    return [
        *TINY,
        f"output_dir={tmp_path}/runs",
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
        f"search.storage=sqlite:///{tmp_path}/optuna.db",
        *extra,
    ]


def cli(*args: str, cwd: Path, **kwargs) -> subprocess.Popen:
    """`lightning-prune ...` as a child process in its own process group."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "lightning_prune.cli", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        **kwargs,
    )


def wait_for(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


class StudyWatcher:
    """Polls one study through one storage connection (a fresh engine per poll would
    exhaust the server's connections)."""

    def __init__(self, storage: str, name: str) -> None:
        self.storage, self.name, self.study = storage, name, None

    def running(self, pid: int | None = None):
        """A RUNNING trial that already has its MLflow run (of worker `pid` if given)."""
        from lightning_prune.search import load_study
        from optuna.trial import TrialState

        if self.study is None:
            try:
                self.study = load_study(self.storage, self.name)
            except KeyError:
                return None
        for trial in self.study.get_trials(states=(TrialState.RUNNING,)):
            worker = str(trial.user_attrs.get("worker", ""))
            if "mlflow_run_id" in trial.user_attrs and (pid is None or worker.endswith(f":{pid}")):
                return trial
        return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def postgres_unavailable() -> str | None:
    """Why a PostgreSQL server cannot be started here, or None."""
    if not (PG_BIN / "initdb").exists():
        return f"PostgreSQL server binaries not found in {PG_BIN} (apt-get install postgresql)"
    if shutil.which("runuser") is None or os.geteuid() != 0:
        return "starting PostgreSQL needs root and runuser (the server refuses to run as root)"
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        return "no `postgres` system user to run the server as"
    return None


class PostgresServer:
    """initdb + pg_ctl on 127.0.0.1 and a free port, in a temp dir owned by postgres."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="lp-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()

    def _as_postgres(self, *args: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *args],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=120,
        )

    def start(self) -> str:
        shutil.chown(self.root, "postgres")
        self._as_postgres(
            str(PG_BIN / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
        )
        options = f"-h 127.0.0.1 -p {self.port} -k {self.root} -c max_connections=100"
        self._as_postgres(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.root / "log"),
            "-w",
            "start",
        )
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        try:
            self._as_postgres(
                str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"
            )
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def group_alive(pgid: int) -> list[int]:
    """Pids of the live (not zombie) processes of process group `pgid` (Linux /proc)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):  # exited while we read
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            alive.append(int(stat.parent.name))
    return alive


def kill_group(proc: subprocess.Popen, timeout: float = 60) -> None:
    """SIGKILL a `cli(...)` process and its whole group (its worker processes too), then
    wait until none of them is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=timeout)
    if proc.stdout is not None:
        proc.stdout.close()
    wait_for(lambda: not group_alive(proc.pid), timeout, what=f"process group {proc.pid} gone")


def serve_postgres():
    """Fixture body: a throwaway PostgreSQL server's URL, or the test skipped with the reason."""
    reason = postgres_unavailable()
    if reason:
        pytest.skip(reason)
    server = PostgresServer()
    try:
        yield server.start()
    finally:
        server.stop()
