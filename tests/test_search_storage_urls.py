"""Storage URLs as documented, and what a search costs its storage: connections, schema creation
by processes started together, curve writes that do not grow with the curve."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from lightning_prune.search.contract import (
    TrialAttr,
    check_storage,
    curve_of,
    load_study,
    make_storage,
    parse_storage,
)
from lightning_prune.search.pruners import SparsityMatchedPruner
from lightning_prune.search.reporter import TrialReporter

from lightning_prune.config import ConfigError, load_config
from lightning_prune.train import build_components, fit_and_test
from tests.conftest import REPO

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.mark.parametrize(
    ("given", "opened"),
    [
        ("postgresql://u:p%40ss@db.example:5433/optuna?sslmode=require",
         "postgresql+psycopg2://u:p%40ss@db.example:5433/optuna?sslmode=require"),
        ("postgres://u@db.example/optuna", "postgresql+psycopg2://u@db.example/optuna"),
        ("postgres+psycopg2://u@h/db", "postgresql+psycopg2://u@h/db"),
        ("postgresql+psycopg2://u@h/db", "postgresql+psycopg2://u@h/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),  # a driver named: kept
        ("mysql+pymysql://u@h/db", "mysql+pymysql://u@h/db"),
    ],
)  # fmt: skip
def test_postgres_urls_open_with_the_installed_driver_and_keep_everything_else(given, opened):
    location = parse_storage(given)
    assert (location.url, location.kind, location.path) == (opened, "rdb", None)


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("journal:///tmp/runs/a.journal", "/tmp/runs/a.journal"),  # absolute, as in a URL
        ("journal:////tmp/runs/a.journal", "/tmp/runs/a.journal"),  # the older spelling
        ("journal://runs/a.journal", "runs/a.journal"),
        ("journal:runs/a.journal", "runs/a.journal"),
        ("runs/a.journal", "runs/a.journal"),
        ("/tmp/a.journal", "/tmp/a.journal"),
    ],
)
def test_journal_urls_are_absolute_with_three_slashes_and_relative_without(url, path):
    location = parse_storage(url)
    assert (location.kind, location.path) == ("journal", Path(path))


def test_a_journal_file_lands_where_its_url_says(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    absolute = tmp_path / "abs" / "a.journal"
    for url in (f"journal://{absolute}", "journal://rel/b.journal", "journal:rel/c.journal"):
        optuna.create_study(storage=make_storage(url), study_name="s")
    assert absolute.is_file()
    assert (tmp_path / "rel" / "b.journal").is_file() and (tmp_path / "rel" / "c.journal").is_file()


def test_url_checks_accept_postgres_and_refuse_what_cannot_work():
    check_storage("postgres://u@h/db", workers=4)
    with pytest.raises(ConfigError, match="journal://runs/optuna.journal") as refused:
        check_storage("sqlite:///runs/optuna.db", workers=2)
    suggested = str(refused.value).split("search.storage=")[1].split()[0]
    assert parse_storage(suggested).path == Path("runs/optuna.journal")  # relative, as meant
    for bad in ("postgres:/h/db", "redis://h", "journal:", "journal:///"):
        with pytest.raises(ConfigError, match="storage"):
            parse_storage(bad)


def test_a_missing_database_driver_is_named_not_raised_raw():
    with pytest.raises(ConfigError, match=r"no database driver for 'mysql'.*psycopg2"):
        make_storage("mysql://u@127.0.0.1:1/db", heartbeat_interval=None)


def _query(url: str, sql: str) -> tuple:
    import psycopg2

    conn = psycopg2.connect(url.replace("+psycopg2", ""))
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchone()
    finally:
        conn.close()


def _connections(url: str) -> int:
    """Open connections to the database, besides the one asking."""
    sql = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
    return int(_query(url, sql)[0]) - 1


def test_postgres_spellings_reach_one_study_and_hold_no_idle_connection(postgres_url):
    bare = postgres_url.replace("postgresql+psycopg2://", "postgresql://")
    study = optuna.create_study(
        storage=make_storage(bare.replace("postgresql://", "postgres://")), study_name="My study"
    )
    trial = study.ask()
    trial.set_user_attr(TrialAttr.WORKER, "here")
    study.tell(trial, 1.0)
    assert _connections(postgres_url) == 0  # no pool: nothing held between transactions
    opened = load_study(bare, "My study")
    assert opened.study_name == "My study"
    assert opened.trials[0].user_attrs[TrialAttr.WORKER] == "here"
    assert _connections(postgres_url) == 0


# search/storage.py alone: the package would import Lightning (5 s of CPU a process).
STORAGE_PY = REPO / "search" / "storage.py"
OPEN_TOGETHER = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("storage", sys.argv[2])
storage = sys.modules["storage"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(storage)
print("ready", flush=True)
sys.stdin.readline()
storage.make_storage(sys.argv[1], heartbeat_interval=None)
"""


def test_processes_opening_an_empty_database_together_all_succeed(postgres_url):
    # Released together once imported, all create the schema at once: without the retry
    # one or two of four fail on a duplicate table or version row nearly every time.
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN_TOGETHER, postgres_url, str(STORAGE_PY)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(4)
    ]
    assert [proc.stdout.readline().strip() for proc in procs] == ["ready"] * 4
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    outputs = [proc.communicate(timeout=120)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 4, "\n".join(outputs)[-3000:]
    stamps = "SELECT (SELECT count(*) FROM alembic_version), count(*) FROM version_info"
    assert _query(postgres_url, stamps) == (1, 1)  # one schema, stamped once


def test_the_curve_is_written_point_by_point_and_reaches_the_matched_pruner(tmp_path):
    cfg = load_config(
        [
            "data=synthetic", "data.num_train=128", "data.num_val=32", "data.num_test=32",
            "trainer.max_epochs=3", "trainer.enable_progress_bar=false",
            f"output_dir={tmp_path}", "+pruning._target_=lightning_prune.pruning.AdaptivePruning",
            "+pruning.target_sparsity=0.9", "+pruning.start=0.0",
            "+pruning.end=0.6", "+pruning.frequency=2", "+pruning.verbose=false",
        ]
    )  # fmt: skip
    judged: list[list] = []

    class Spy(SparsityMatchedPruner):
        def prune(self, study, trial):
            judged.append(curve_of(trial))  # what SparsityMatchedPruner reads (sparsity_at)
            return False

    storage = make_storage(f"sqlite:///{tmp_path}/o.db", heartbeat_interval=None)
    study = optuna.create_study(storage=storage, direction="maximize", pruner=Spy())
    trial = study.ask()
    components = build_components(cfg)
    reporter = TrialReporter(trial, pruning=components[2])
    fit_and_test(cfg, callbacks=[reporter], test=False, components=components)
    frozen = study.trials[0]
    points = sorted(k for k in frozen.user_attrs if k.startswith(TrialAttr.CURVE_POINT))
    assert points == ["curve/0000", "curve/0001", "curve/0002"]
    assert frozen.user_attrs[TrialAttr.CURVE] == reporter.curve == curve_of(frozen)
    # The pruner saw, at each validation, the curve up to and including that validation.
    assert judged == [reporter.curve[: i + 1] for i in range(3)]
    assert judged[-1][-1]["sparsity"] > 0.5
