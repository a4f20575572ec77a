"""Run every benchmark (`make bench`), or all of them on tiny settings (`--quick`).

Each script prints its own table and writes it (and its figures) to benchmarks/results/;
`--out DIR` redirects them, which the quick smoke test uses so committed results stay.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from common import ENV

HERE = Path(__file__).resolve().parent
# script -> extra arguments of the full run (the defaults of each script are its full run)
SCRIPTS = {
    # the README's headline: all 55k images, Adam (add `--optimizer sgd` for the SGD table)
    "bench_peers.py": ["--seeds", "0", "1", "2", "--output", "peers_full"],
    "bench_structured.py": ["--seeds", "0", "1", "2"],
    "bench_search.py": [],
    "bench_ensembles.py": ["--seeds", "0", "1", "2"],
    "bench_pipeline.py": [],  # search + ensemble vs best preset vs dense, ~1 hour
    "bench_step_overhead.py": [],  # the callback's step time taken apart
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings: a smoke test")
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    parser.add_argument("--only", nargs="+", choices=sorted(SCRIPTS), help="a subset")
    args = parser.parse_args()
    env = {**os.environ}
    if args.out:
        env[ENV] = str(args.out.resolve())
    timings, failed = {}, []
    for script in args.only or SCRIPTS:
        extra = ["--quick"] if args.quick else SCRIPTS[script]
        print(f"\n=== {script} {' '.join(extra)}", flush=True)
        start = time.perf_counter()
        code = subprocess.call([sys.executable, str(HERE / script), *extra], env=env)
        timings[script] = time.perf_counter() - start
        if code != 0:
            failed.append(script)
    print("\n| benchmark | wall time (s) | status |\n|---|---:|---|")
    for script, seconds in timings.items():
        print(f"| {script} | {seconds:.0f} | {'FAILED' if script in failed else 'ok'} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
