"""Every bad input of tests/bad_input_cases.py: its exit code, one line on stderr naming what
is wrong, no traceback, and nothing already recorded changed. Run in-process (`main(argv)`
returns the exit code) except `ui`'s Ctrl-C, which needs a real process group."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch

from lightning_prune.cli import DEBUG_ENV, main
from tests import bad_input_cases as bad
from tests.conftest import CLI


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """One folder for all cases, two levels down so an escape upwards would show."""
    folder = tmp_path_factory.mktemp("bad") / "a" / "work"
    folder.mkdir(parents=True)
    bad.prepare(folder)
    return folder


@pytest.fixture(scope="module")
def ports():
    with bad.ports() as values:
        yield values


def _listing(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


@pytest.mark.parametrize("case", bad.CASES, ids=lambda c: c.name.replace(" ", "-"))
def test_bad_input_gives_one_line_and_its_exit_code(case, world, ports, monkeypatch, capsys):
    if case.needs_no_gpu and torch.cuda.is_available():
        pytest.skip("a GPU is here")
    argv, fragment = bad.filled(case, ports)
    before = (bad.kept_trials(world), bad.snapshot(world), _listing(world.parent))
    monkeypatch.chdir(world)
    code = main(argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert code == case.code, err[-2000:]
    assert "Traceback" not in err
    assert len(errors) == 1 and errors[0].startswith("lightning-prune"), err[-2000:]
    assert fragment in errors[0]
    assert (bad.kept_trials(world), bad.snapshot(world), _listing(world.parent)) == before


def test_the_table_is_large_and_has_both_kinds_of_failure():
    codes = [case.code for case in bad.CASES]
    assert len(bad.CASES) >= 40 and {1, 2} <= set(codes)
    assert len({case.name for case in bad.CASES}) == len(bad.CASES)


def test_debug_variable_keeps_the_traceback(world, monkeypatch, capsys):
    """An unexpected failure while running (a disk error injected where the ensemble reads
    its data) is one line and exit 1, or the whole traceback with LIGHTNING_PRUNE_DEBUG=1."""
    import lightning_prune.ensembles.run as ensemble_run

    def disk_gone(datamodule):
        raise OSError(5, "Input/output error", "runs/data")

    monkeypatch.chdir(world)
    monkeypatch.setattr(ensemble_run, "check_data", disk_gone)
    assert main(["ensemble", f"ensemble.study_name={bad.KEPT_STUDY}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Input/output error" in err[0] and "Traceback" not in err[0]
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(OSError, match="Input/output error"):
        main(["ensemble", f"ensemble.study_name={bad.KEPT_STUDY}"])


def _processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, process group, state) of every process, from /proc."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        found[int(stat.parent.name)] = (int(fields[1]), int(fields[2]), fields[0])
    return found


def _descendants(pid: int) -> set[int]:
    table, found, grew = _processes(), {pid}, True
    while grew:
        new = {p for p, (parent, _, _) in table.items() if parent in found} - found
        found |= new
        grew = bool(new)
    return found - {pid}


def _alive(pids: set[int], groups: set[int]) -> set[int]:
    """Processes among `pids` or in `groups` still running (zombies await their reaper)."""
    table = _processes()
    return {p for p, (_, group, state) in table.items()
            if (p in pids or group in groups) and state != "Z"}  # fmt: skip


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process table from /proc")
def test_ctrl_c_on_ui_stops_the_whole_server_and_exits_130(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ui = subprocess.Popen(
        [CLI, "ui", "--port", str(port)], cwd=tmp_path, env=env, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and ui.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        assert ui.poll() is None, ui.communicate()[0][-2000:]
        server = _descendants(ui.pid)
        table = _processes()
        groups = {table[p][1] for p in server if p in table} - {ui.pid}
        assert len(server) >= 2 and groups  # mlflow's launcher and its web workers
        ui.send_signal(signal.SIGINT)  # what a terminal's Ctrl-C delivers to the CLI
        out, _ = ui.communicate(timeout=150)  # a loaded machine stops slowly
    finally:
        if ui.poll() is None:
            os.killpg(ui.pid, signal.SIGKILL)
    assert ui.returncode == 130, out[-2000:]
    assert "Traceback" not in out
    assert _alive(server, groups) == set()
