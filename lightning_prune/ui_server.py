"""`lightning-prune ui`: the MLflow UI on the tracking store, in its own process group.

The URL is printed once the server answers (not when it is merely started), and Ctrl-C or
SIGTERM stops the whole group within a few seconds (`mlflow ui` starts web workers that
outlive a signal sent to it alone)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from lightning_prune.config import ConfigError
from lightning_prune.console import print_error
from lightning_prune.preflight import PreflightError, check_tracking

INTERRUPTED, TERMINATED, FAILURE = 130, 128 + signal.SIGTERM, 1
STOP_GRACE_S = 3.0  # SIGTERM, then SIGKILL what is left


def check_port(port: int) -> None:
    if not 1 <= port <= 65535:
        raise ConfigError(f"--port must be an integer in 1-65535, got {port}")
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as err:
            raise PreflightError(
                f"--port {port}: cannot listen on 127.0.0.1:{port} ({err.strerror or err}); "
                "pick another port with --port"
            ) from None


def group_alive(pgid: int) -> bool:
    """Whether any process of the group still runs (zombies awaiting their reaper do not)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def stop_group(pgid: int) -> None:
    """SIGTERM to the whole group, SIGKILL what is left after a short grace period."""
    for sig, grace_s in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            if not group_alive(pgid):
                return
            time.sleep(0.1)


class _Terminated(Exception):
    """SIGTERM reached the CLI while it waited for the server."""


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False


def _wait_then_announce(server: subprocess.Popen, url: str, what: str) -> int | None:
    """Poll until the server answers (print the URL) or exits (its exit code)."""
    while server.poll() is None:
        if _answers(url):
            print(f"MLflow UI for {what} on {url} (Ctrl-C to stop)", flush=True)
            return server.wait()
        time.sleep(0.5)
    return server.returncode


def run_ui(tracking_uri: str, port: int) -> int:
    check_port(port)
    check_tracking(tracking_uri)
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri,
               "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    print(f"Starting the MLflow UI for {tracking_uri} ...", flush=True)

    def on_term(_signum, _frame):
        raise _Terminated

    server = subprocess.Popen(command, start_new_session=True)
    previous = signal.signal(signal.SIGTERM, on_term)
    # Ctrl-C stops the server even where the parent shell ignored SIGINT (a job started
    # with `&` from a script inherits SIG_IGN, and Python then never raises KeyboardInterrupt)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code = _wait_then_announce(server, url, tracking_uri)
    except (KeyboardInterrupt, _Terminated) as stop:
        stop_group(server.pid)
        server.wait()
        return INTERRUPTED if isinstance(stop, KeyboardInterrupt) else TERMINATED
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
    stop_group(server.pid)  # workers left behind by a server that exited
    if code != 0:
        print_error("ui", f"the MLflow UI server exited with code {code} (see its output above)")
        return FAILURE
    return 0
