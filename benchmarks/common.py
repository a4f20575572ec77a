"""Where benchmark scripts write: benchmarks/results, or $LIGHTNING_PRUNE_BENCH_RESULTS
(the quick smoke test points it at a temporary folder so committed results stay)."""

from __future__ import annotations

import os
from pathlib import Path

ENV = "LIGHTNING_PRUNE_BENCH_RESULTS"


def results_dir() -> Path:
    folder = Path(os.environ.get(ENV) or Path(__file__).resolve().parent / "results")
    folder.mkdir(parents=True, exist_ok=True)
    return folder
