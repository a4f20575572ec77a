"""Every runnable block of the README runs, on tiny settings, so the README cannot drift.

A fenced block counts when the line before it is `<!-- runnable -->`. Shell blocks run
line by line; `lightning-prune` commands get tiny data/epoch/trial overrides appended
(Hydra lets the last override win). Python blocks run as they are, in one namespace.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

from tests.conftest import REPO, needs_fmnist, run_cli

MARKER = "<!-- runnable -->"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)
TINY = {
    "train": ["data.subset=600", "data.val_subset=200", "data.test_subset=200",
              "trainer.max_epochs=1", "trainer.enable_progress_bar=false"],
    "search": ["data.subset=600", "data.val_subset=200", "data.test_subset=200",
               "trainer.max_epochs=1", "search.n_trials=3", "search.progress=false",
               "search.demand.min_sparsity=null"],
    "ensemble": ["data.val_subset=200", "data.test_subset=200", "ensemble.k=2"],
    "report": [],
    "ui": None,  # a server: checked separately with --help
}  # fmt: skip


def runnable_blocks() -> list[tuple[str, str]]:
    text = (REPO / "README.md").read_text()
    blocks = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip().splitlines()
        if before and before[-1].strip() == MARKER:
            blocks.append((match.group(1), match.group(2)))
    return blocks


def shell_commands() -> list[list[str]]:
    commands = []
    for language, body in runnable_blocks():
        if language not in ("bash", "sh", "shell"):
            continue
        for line in body.splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                commands.append(shlex.split(line))
    return commands


def test_readme_has_runnable_blocks():
    languages = {language for language, _ in runnable_blocks()}
    assert {"bash", "python"} <= languages
    assert any(cmd[:2] == ["lightning-prune", "search"] for cmd in shell_commands())


@needs_fmnist
def test_readme_shell_commands_run(tmp_path):
    for command in shell_commands():
        assert command[0] == "lightning-prune", f"README runs only the CLI here: {command}"
        sub = next((a for a in command[1:] if not a.startswith("-")), None)
        if sub == "ui" or "--help" in command:
            out = run_cli(*(command[1:] if sub != "ui" else ["ui", "--help"]), cwd=tmp_path)
        else:
            out = run_cli(*command[1:], *(TINY.get(sub) or []), cwd=tmp_path, timeout=600)
        shown = f"{shlex.join(command)}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
        assert out.returncode == 0, shown


@needs_fmnist
def test_readme_python_blocks_run(tmp_path):
    code = "\n\n".join(body for language, body in runnable_blocks() if language == "python")
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
