"""Shared fixtures: keep every test's files in its own folder and the threads few."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).with_name("lightning-prune"))


@pytest.fixture
def in_tmp(tmp_path, monkeypatch) -> Path:
    """Run the test inside a fresh folder, so `runs/` never lands in the repo."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_cli(*args: str, cwd: Path, timeout: float = 300, env: dict | None = None):
    """Run the installed `lightning-prune` console script as a user would."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env
    )


def fashion_mnist_available() -> bool:
    from lightning_prune.data.sources import SYSTEM_DIR

    return SYSTEM_DIR.is_dir() or bool(os.environ.get("LIGHTNING_PRUNE_DATA"))


needs_fmnist = pytest.mark.skipif(
    not fashion_mnist_available(), reason="Fashion-MNIST not installed (make data)"
)


@pytest.fixture
def postgres_url():
    """A throwaway PostgreSQL server on 127.0.0.1 (skipped where its binaries are missing)."""
    from tests.search_helpers import serve_postgres

    yield from serve_postgres()
