"""The bad-input table: every case of tests/bad_input_cases.py through the real console
script, printed as markdown (case | command | exit | its error line on stderr) to paste into a
note. Writes nothing but a temporary folder.

    python benchmarks/bad_inputs_table.py [--jobs 2] [--only WORD]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests import bad_input_cases as bad  # noqa: E402  (the repo root is on the path now)

CLI = str(Path(sys.executable).with_name("lightning-prune"))


def _run(case: bad.Case, folder: Path, values: dict[str, str]) -> tuple[int, str, float]:
    argv, _ = bad.filled(case, values)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("LIGHTNING_PRUNE_DEBUG", None)
    start = time.perf_counter()
    out = subprocess.run(
        [CLI, *argv], cwd=folder, capture_output=True, text=True, timeout=600, env=env
    )
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if ": error: " in line]  # a search's summary line aside
    return out.returncode, (errors or lines or [""])[0], time.perf_counter() - start


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="commands run at once")
    parser.add_argument("--only", default="", help="cases whose name contains this word")
    args = parser.parse_args()
    cases = [c for c in bad.CASES if args.only in c.name]
    with tempfile.TemporaryDirectory() as tmp, bad.ports() as values:
        folder = Path(tmp) / "work"
        folder.mkdir()
        bad.prepare(folder)
        before = bad.kept_trials(folder)
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            results = list(pool.map(lambda c: _run(c, folder, values), cases))
        intact = bad.kept_trials(folder) == before
    print("| case | command | exit | error line on stderr |")
    print("|---|---|---|---|")
    mismatches = 0
    for case, (code, line, _) in zip(cases, results, strict=True):
        argv, fragment = bad.filled(case, values)
        ok = code == case.code and fragment in line
        mismatches += not ok
        command = "lightning-prune " + " ".join(a for a in argv if a not in bad.FAST)
        flag = "" if ok else f" (expected {case.code})"
        print(f"| {_cell(case.name)} | `{_cell(command)}` | {code}{flag} | {_cell(line)} |")
    seconds = sorted(s for *_, s in results)
    print(f"\n{len(cases)} cases, {mismatches} not as expected; the pre-made study "
          f"{'kept' if intact else 'LOST'} its trials; median {seconds[len(seconds) // 2]:.1f} s "
          f"per command (console script start included).")  # fmt: skip
    return 1 if mismatches or not intact else 0


if __name__ == "__main__":
    sys.exit(main())
