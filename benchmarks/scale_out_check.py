"""Two "machines" on one PostgreSQL study and one MLflow server, one of them SIGKILLed.

Each machine is `lightning-prune search search.workers=2` in its own working folder; both
share a PostgreSQL storage (a server started here on 127.0.0.1) and an MLflow tracking
server (`mlflow server`, 127.0.0.1). Machine B's whole process group is killed mid-trial,
then B runs the same command again. Prints a table: trials per state and per machine,
repeated recipes, MLflow runs left RUNNING, statuses that disagree with Optuna, and the
connections and transactions PostgreSQL saw.

    .venv/bin/python benchmarks/scale_out_check.py        # about 3 minutes on 2 cores
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import optuna  # noqa: E402
from lightning_prune.search.contract import make_storage  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.pool import NullPool  # noqa: E402

from tests.search_helpers import (  # noqa: E402
    TINY,
    PostgresServer,
    group_alive,
    postgres_unavailable,
)

CLI = str(Path(sys.executable).with_name("lightning-prune"))
STUDY = "scale-out"
N_TRIALS = 12
STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def mlflow_server(folder: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{folder}/server.db",
         "--artifacts-destination", str(folder / "artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    for _ in range(120):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("mlflow server did not start")


def machine(folder: Path, storage: str, uri: str) -> subprocess.Popen:
    folder.mkdir(parents=True, exist_ok=True)
    args = [*TINY, f"search.storage={storage}", f"tracking.uri={uri}", "search.workers=2",
            f"search.study_name={STUDY}", f"search.n_trials={N_TRIALS}",
            f"search.max_trials={N_TRIALS}", "output_dir=runs",
            "search.heartbeat_interval=1", "search.grace_period=3",
            "trainer.max_epochs=3"]  # fmt: skip
    return subprocess.Popen(
        [CLI, "search", *args], cwd=folder, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip


def b_is_running_a_trial(storage, pgid: int) -> bool:
    """A trial of machine B (a worker pid of its process group) is RUNNING."""
    try:
        study = optuna.load_study(study_name=STUDY, storage=storage)
    except KeyError:
        return False
    pids = set(group_alive(pgid))
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    workers = [int(t.user_attrs.get("worker", "x:0").split(":")[-1]) for t in running]
    if os.environ.get("SCALE_OUT_DEBUG"):
        print(f"B pids {sorted(pids)}; running trials' workers {workers}", flush=True)
    return any(w in pids for w in workers)


def stats(url: str) -> tuple[int, int]:
    engine = create_engine(url)
    with engine.connect() as conn:
        row = conn.execute(text("SELECT xact_commit + xact_rollback FROM pg_stat_database "
                                "WHERE datname = current_database()")).one()  # fmt: skip
    engine.dispose()
    return int(row[0]), 0


def main() -> int:
    reason = postgres_unavailable()
    if reason:
        print(f"skipped: {reason}")
        return 0
    server = PostgresServer()
    url = server.start()
    tmp = Path(tempfile.mkdtemp(prefix="scale-out-"))
    mlflow, uri = mlflow_server(tmp)
    peak_connections = 0
    try:
        before, _ = stats(url)
        a, b = machine(tmp / "a", url, uri), machine(tmp / "b", url, uri)
        engine = create_engine(url, poolclass=NullPool)
        watch = make_storage(url, heartbeat_interval=None)  # NullPool: no idle connections
        killed = False
        start = time.time()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        while a.poll() is None or (not killed and b.poll() is None):
            with engine.connect() as conn:
                count = conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE "
                                          "datname = current_database()")).scalar()  # fmt: skip
            peak_connections = max(peak_connections, int(count) - 1)  # minus this query
            if not killed and b_is_running_a_trial(watch, b.pid):
                os.killpg(b.pid, signal.SIGKILL)  # the whole machine, mid-trial
                b.wait()
                killed = True
            if time.time() - start > 600:
                raise RuntimeError("no trial of machine B was seen running")
            time.sleep(0.3)
        engine.dispose()
        b2 = machine(tmp / "b", url, uri)
        b2.wait(timeout=600)
        after, _ = stats(url)
        study = optuna.load_study(study_name=STUDY, storage=watch)
        trials = study.trials
        states = {s: sum(t.state.name == s for t in trials) for s in ("COMPLETE", "PRUNED", "FAIL")}
        recipes = [tuple(sorted(t.params.items())) for t in trials if t.state.name != "FAIL"]
        repeats = len(recipes) - len(set(recipes))
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("lightning-prune").experiment_id
        runs = client.search_runs([experiment], max_results=1000, run_view_type=3)
        running = [r.info.run_name for r in runs if r.info.status == "RUNNING"]
        by_id = {r.info.run_id: r for r in runs}
        wrong = [
            t.number for t in trials if t.user_attrs.get("mlflow_run_id") in by_id
            and by_id[t.user_attrs["mlflow_run_id"]].info.status != STATUS[t.state.name]
        ]  # fmt: skip
        retried = sum(t.system_attrs.get("failed_trial") is not None for t in trials)
        parents = [r for r in runs if r.data.tags.get("job") == "search"]
        workers = {t.user_attrs.get("worker", "?").split(":")[-1] for t in trials}
        rows = [
            ("exit codes (A, B killed, B again)", f"{a.returncode}, -9, {b2.returncode}"),
            ("trials retried after the kill", str(retried)),
            ("trials COMPLETE / PRUNED / FAIL", f"{states['COMPLETE']} / {states['PRUNED']} / "
             f"{states['FAIL']}"),
            ("worker processes that ran trials", str(len(workers))),
            ("repeated recipes", str(repeats)),
            ("MLflow runs RUNNING after exit", str(len(running))),
            ("trial runs whose status disagrees with Optuna", str(len(wrong))),
            ("study parent runs", str(len(parents))),
            ("peak PostgreSQL connections (4 workers + 2 mains)", str(peak_connections)),
            ("transactions per trial (all, incl. heartbeats)",
             f"{(after - before) / len(trials):.0f}"),
        ]  # fmt: skip
        print("| check | value |\n|---|---|")
        for name, value in rows:
            print(f"| {name} | {value} |")
        ok = (repeats == 0 and not running and not wrong and len(parents) == 1
              and a.returncode == 0 and b2.returncode == 0)  # fmt: skip
        return 0 if ok else 1
    finally:
        os.killpg(mlflow.pid, signal.SIGTERM)
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
