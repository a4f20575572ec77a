"""The benchmark scripts run end to end on tiny settings, so they cannot rot."""

import subprocess
import sys

from tests.conftest import REPO, needs_fmnist


@needs_fmnist
def test_make_bench_quick_runs_every_script(tmp_path):
    script = str(REPO / "benchmarks" / "run_all.py")
    out = subprocess.run(
        [sys.executable, script, "--quick", "--out", str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    written = {p.name for p in tmp_path.iterdir()}
    for name in ("peers", "structured", "search", "ensembles", "pipeline"):
        assert any(f.startswith(name) and f.endswith(".md") for f in written), (name, written)
    assert "| bench_peers.py |" in out.stdout
