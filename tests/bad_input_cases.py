# ruff: noqa: E501  (a table: one case per line reads better than wrapped calls)
"""Bad inputs and broken surroundings, with the exit code and the one-line error each gives.

Shared by tests/test_bad_inputs.py (in-process, asserted) and benchmarks/bad_inputs_table.py
(the real console script, printed as a table). Every case runs in one prepared folder
(`prepare`): a study that must survive every case, a corrupt database, a file where a folder
is expected, corrupt data files. `{closed_port}` and `{busy_port}` in an argv are filled in
by `ports`.
"""

from __future__ import annotations

import contextlib
import gzip
import socket
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

KEPT_STUDY = "kept"  # the pre-made study: 3 COMPLETE trials that no case may touch
# Small runs, in case a check ever lets a case through to training.
FAST = ("data=synthetic", "trainer.max_epochs=1", "search.n_trials=1",
        "search.dense_reference=false", "trainer.enable_progress_bar=false",
        "search.progress=false")  # fmt: skip
IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


@dataclass(frozen=True)
class Case:
    """One command line, its exit code and a fragment of its one-line error."""

    name: str
    argv: tuple[str, ...]
    code: int
    fragment: str
    needs_no_gpu: bool = False  # the case is about a missing GPU


def _case(name: str, cmd: str, *args: str, code: int = 2, fragment: str, **kw) -> Case:
    return Case(name, (cmd, *args), code, fragment, **kw)


CASES: list[Case] = [
    # -- the command line itself
    _case("unknown command", "trian", fragment="invalid choice: 'trian'"),
    _case("ui port not a number", "ui", "--port", "abc", fragment="invalid int value: 'abc'"),
    _case("ui port above 65535", "ui", "--port", "99999", fragment="--port must be an integer in 1-65535"),
    _case("ui port 0", "ui", "--port", "0", fragment="--port must be an integer in 1-65535"),
    _case("ui port in use", "ui", "--port", "{busy_port}", fragment="cannot listen on 127.0.0.1"),
    # -- config values (composed and checked before anything runs)
    _case("unknown key", "train", "trainer.max_epochz=3", fragment="trainer.max_epochz"),
    _case("wrong type", "train", "trainer.max_epochs=ten", fragment="trainer.max_epochs must be int"),
    _case("unknown top-level key", "train", *FAST, "+foo=1", fragment="+foo=1 adds the top-level key 'foo'"),
    _case("unknown top-level key, forced", "train", *FAST, "++foo=1", fragment="adds the top-level key 'foo'"),
    _case("cfg choice misspelt", "train", "--cfg", "jobb", fragment="--cfg takes job, hydra or all"),
    _case("cfg with an unknown key", "train", "--cfg", "trainer.max_epochz=3", fragment="trainer.max_epochz"),
    _case("zero epochs", "train", *FAST[:1], "trainer.max_epochs=0", fragment="trainer.max_epochs must be an integer >= 1 (or -1: no limit), got 0"),
    _case("zero steps", "train", *FAST[:1], "+trainer.max_steps=0", fragment="trainer.max_steps must be an integer >= 1 (or -1: no limit), got 0"),
    _case("search with zero epochs", "search", *FAST[:1], *FAST[2:], "trainer.max_epochs=0", fragment="trainer.max_epochs must be an integer >= 1"),
    _case("unknown preset", "train", "model=resnet", fragment="model/resnet"),
    _case("negative subset", "train", "data.subset=-5", fragment="data.subset must be a positive integer, got -5"),
    _case("bad criterion", "train", *FAST[:1], "pruning=magnitude_gradual",
          "pruning.criterion=l3norm", fragment="criterion must be one of"),
    _case("target sparsity 1.5", "train", *FAST[:1], "pruning=magnitude_gradual",
          "pruning.target_sparsity=1.5", fragment="target_sparsity"),
    _case("gating budget 1.5", "train", *FAST[:1], "dynamic=gated", "dynamic.budget=1.5", fragment="dynamic: DynamicGating budget must be in (0, 1], got 1.5"),
    _case("gating budget 0", "train", *FAST[:1], "dynamic=gated", "dynamic.budget=0", fragment="DynamicGating budget must be in (0, 1], got 0"),
    _case("gating the output layer", "train", *FAST[:1], "model=lenet5", "dynamic=gated", "dynamic.include=[net.7]", fragment="cannot gate layer 'net.7'"),
    _case("gating pattern matches nothing", "train", *FAST[:1], "dynamic=gated", "dynamic.include=[conv9]", fragment="include pattern 'conv9' matches no"),
    _case("search gating budget 0", "search", "dynamic=gated", "dynamic.budget=0", fragment="dynamic: DynamicGating budget must be in (0, 1], got 0"),
    _case("search mode choice", "search", "search=dynamic", "search.space.mode.choices=[static,sometimes]", fragment="target 'dynamic' takes choices from"),
    _case("gating bins 0", "train", *FAST[:1], "dynamic=gated", "dynamic.bins=0", fragment="DynamicGating bins must be an integer >= 1"),
    _case("trainer devices 0", "train", *FAST[:1], "trainer.devices=0", fragment="trainer: `Trainer(devices=0)`"),
    _case("bad sampler", "search", "search.sampler=grid", fragment="search.sampler must be tpe, random or nsga2"),
    _case("bad objective", "search", "search.objective=fast", fragment="search.objective must be"),
    _case("bad pruner", "search", "search.pruner.kind=sometimes", fragment="search.pruner.kind must be"),
    _case("zero trials", "search", "search.n_trials=0", fragment="search.n_trials must be an integer >= 1"),
    _case("zero max_trials", "search", "search.max_trials=0", fragment="search.max_trials must be an integer >= 1 or null"),
    _case("negative timeout", "search", "search.timeout=-1", fragment="search.timeout must be > 0"),
    _case("sqlite with 2 workers", "search", "search.workers=2", fragment="needs a storage safe for parallel writers"),
    _case("storage not a URL", "search", "search.storage=ftp://x", fragment="is not a storage URL"),
    _case("impossible demand", "search", "search.demand.min_sparsity=1.5", fragment="search.demand.min_sparsity must be < 1"),
    _case("search top_k 0", "search", *FAST, "search.top_k=0", fragment="search.top_k must be an integer >= 1, got 0"),
    _case("report top_k 0", "report", "search.study_name=kept", "search.top_k=0", fragment="search.top_k must be an integer >= 1, got 0"),
    _case("negative max_retry", "search", *FAST, "search.max_retry=-1", fragment="search.max_retry must be an integer >= 0, got -1"),
    _case("heartbeat interval 0", "search", *FAST, "search.heartbeat_interval=0", fragment="search.heartbeat_interval must be an integer >= 1 or null"),
    _case("grace period within a beat", "search", *FAST, "search.grace_period=5", fragment="search.grace_period must be an integer > search.heartbeat_interval (10), got 5"),
    _case("unknown space field", "search", "+search.space.lr.typo=1", fragment="search.space.lr: unknown field(s) ['typo']"),
    _case("bad weighting", "ensemble", "ensemble.weighting=best", fragment="ensemble.weighting must be one of"),
    _case("ensemble k 0", "ensemble", "ensemble.k=0", fragment="ensemble.k must be >= 1"),
    _case("ensemble data_from", "ensemble", "ensemble.data_from=x", fragment="ensemble.data_from must be one of ('study', 'config'), got 'x'"),
    _case("ensemble pool -1", "ensemble", "ensemble.diversity=agreement", "ensemble.pool=-1", fragment="ensemble.pool must be an integer >= 0 (0: 2k), got -1"),
    _case("ensemble greedy rounds 0", "ensemble", "ensemble.weighting=greedy", "ensemble.greedy_rounds=0", fragment="ensemble.greedy_rounds must be an integer >= 1, got 0"),
    _case("ensemble latency batch 0", "ensemble", "ensemble.latency_batch=0", fragment="ensemble.latency_batch must be an integer >= 1, got 0"),
    _case("ensemble of unknown study", "ensemble", "ensemble.study_name=nope", fragment="no study 'nope'"),
    # -- names that become paths (point 6: nothing is written outside output_dir)
    _case("study name escapes runs/", "search", *FAST, "search.study_name=../../x", fragment="search.study_name='../../x' is not allowed"),
    _case("study name with a slash", "search", *FAST, "search.study_name=a/b", fragment="search.study_name='a/b' is not allowed"),
    _case("empty study name", "search", *FAST, "search.study_name=''", fragment="search.study_name='' is not allowed"),
    _case("hidden study name", "search", *FAST, "search.study_name=.x", fragment="search.study_name='.x' is not allowed"),
    _case("report study name escapes", "report", "search.study_name=../x", fragment="search.study_name='../x' is not allowed"),
    _case("ensemble study name escapes", "ensemble", "ensemble.study_name=../../x", fragment="ensemble.study_name='../../x' is not allowed"),
    # -- study storage
    _case("corrupt SQLite study file", "search", *FAST, "search.storage=sqlite:///bad.db", fragment="bad.db is not a readable SQLite database"),
    _case("report on a corrupt study file", "report", "search.storage=sqlite:///bad.db", fragment="bad.db is not a readable SQLite database"),
    _case("ensemble on a corrupt study file", "ensemble", "ensemble.storage=sqlite:///bad.db", fragment="ensemble.storage=sqlite:///bad.db"),
    _case("unreachable PostgreSQL", "search", *FAST, "search.storage=postgresql+psycopg2://u:pw@127.0.0.1:{closed_port}/db", fragment="u:***@127.0.0.1:{closed_port}/db: cannot reach the database"),
    _case("unreachable PostgreSQL, bare URL", "search", *FAST, "search.storage=postgresql://u:pw@127.0.0.1:{closed_port}/db", fragment="u:***@127.0.0.1:{closed_port}/db: cannot"),
    _case("report on a missing storage", "report", "search.storage=sqlite:///missing.db", fragment="no Optuna storage at sqlite:///missing.db"),
    _case("storage is another tool's database", "search", *FAST, "search.storage=sqlite:///other.db", fragment="other.db is a SQLite database but not an Optuna storage"),
    _case("journal under a file", "search", *FAST, "search.storage=afile/x.journal", fragment="afile is a file, not a folder"),
    # -- tracking store
    _case("corrupt tracking store", "train", *FAST, "tracking.uri=sqlite:///bad.db", fragment="tracking.uri=sqlite:///bad.db"),
    _case("tracking store under a file", "train", *FAST, "tracking.uri=sqlite:///afile/mlflow.db", fragment="tracking.uri: cannot create afile"),
    _case("tracking server down", "train", *FAST, "tracking.uri=http://127.0.0.1:{closed_port}", fragment="no MLflow server answers at 127.0.0.1:{closed_port}"),
    _case("tracking folder store", "train", *FAST, "tracking.uri=runs/mlruns", fragment="is a folder store"),
    _case("tracking SQLite URL with two slashes", "train", *FAST, "tracking.uri=sqlite://runs/ml2.db", fragment="tracking.uri=sqlite://runs/ml2.db is not a SQLite file URL; use sqlite:///relative/path.db or sqlite:////absolute/path.db"),
    _case("ui on a corrupt store", "ui", "--port", "{closed_port}", "tracking.uri=sqlite:///bad.db", fragment="tracking.uri=sqlite:///bad.db"),
    _case("ui on the Optuna database", "ui", "--port", "{closed_port}", "tracking.uri=sqlite:///runs/optuna.db", fragment="runs/optuna.db is a SQLite database but not an MLflow tracking store"),
    _case("search on a corrupt tracking store", "search", *FAST, "tracking.uri=sqlite:///bad.db", fragment="tracking.uri=sqlite:///bad.db"),
    # -- output folders
    _case("train output under a file", "train", *FAST, "output_dir=afile/runs", fragment="output_dir: cannot create afile/runs/models"),
    _case("search output under a file", "search", *FAST, "output_dir=afile", fragment="output_dir: cannot create afile/studies"),
    _case("ensemble output under a file", "ensemble", "ensemble.study_name=kept", "ensemble.output=afile/e.pt", fragment="ensemble.output: cannot create afile"),
    _case("ensemble output is a folder", "ensemble", "ensemble.study_name=kept", "ensemble.output=runs", fragment="ensemble.output=runs is a folder"),
    _case("report output under a file", "report", "search.study_name=kept", "output_dir=afile", fragment="output_dir: cannot create afile/reports/kept"),
    # -- accelerator
    _case("GPU asked, none here", "train", *FAST, "trainer.accelerator=gpu", fragment="trainer.accelerator=gpu needs a GPU", needs_no_gpu=True),
    _case("CUDA asked in a search", "search", *FAST, "trainer.accelerator=cuda", fragment="trainer.accelerator=cuda needs a GPU", needs_no_gpu=True),
    # -- data
    _case("data_dir missing", "train", "data.data_dir=no-such-folder", fragment="data.data_dir=no-such-folder: no-such-folder does not exist"),
    _case("data_dir without the files", "train", "data.data_dir=fm_empty", fragment="lacks train-images-idx3-ubyte.gz"),
    _case("data_dir is a file", "train", "data.data_dir=afile", fragment="afile is not a folder"),
    _case("corrupt idx file", "train", "data.data_dir=fm_corrupt", fragment="is corrupt or truncated"),
    _case("search on a missing data_dir", "search", "search.progress=false", "data.data_dir=no-such-folder", fragment="data.data_dir=no-such-folder"),
    # -- runtime failures (exit 1)
    _case("every trial fails", "search", *FAST, "search.study_name=doomed", "search.n_trials=2", "data.num_train=64", "data.num_val=32", "data.num_test=32",
          "search.space.criterion.choices=[nonsense]", code=1, fragment="study 'doomed': no trial completed (0 complete, 0 pruned, 2 failed in the study)"),
    _case("resumed study, every new trial fails", "search", *FAST, "search.study_name=resumed", "search.n_trials=2", "data.num_train=64", "data.num_val=32", "data.num_test=32",
          "search.space.criterion.choices=[nonsense]", code=1, fragment="study 'resumed': every trial this run finished failed (1 complete, 0 pruned, 2 failed in the study); last failure (trial 2): ConfigError: pruning: criterion must be one of"),
    _case("corrupt ensemble file read by report", "report", "search.study_name=kept", fragment="runs/ensembles/kept-optimized.pt cannot be read"),
    _case("study's recorded data gone", "ensemble", "ensemble.study_name=kept", fragment="data.data_dir=recorded-data-gone: recorded-data-gone does not exist"),
]  # fmt: skip


def _write_study(storage: str, name: str, n_trials: int) -> None:
    """A study with `n_trials` COMPLETE trials and a recorded config (whose data is gone)."""
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    data = {"_target_": "lightning_prune.data.FashionMNISTDataModule",
            "data_dir": "recorded-data-gone"}  # fmt: skip
    study.set_user_attr("config", {"data": data})
    for i in range(n_trials):
        study.add_trial(
            create_trial(
                value=0.5 + i / 10,
                params={"lr": 0.001 * (i + 1)},
                distributions={"lr": FloatDistribution(0.0001, 0.01, log=True)},  # as searched
                user_attrs={"val_acc": 0.5 + i / 10, "sparsity": 0.9, "feasible": True},
            )
        )


def kept_trials(folder: Path) -> list[tuple[int, str, float]]:
    """(number, state, value) of the pre-made study's trials, to compare before and after."""
    import optuna

    study = optuna.load_study(study_name=KEPT_STUDY, storage=f"sqlite:///{folder}/runs/optuna.db")
    return [(t.number, t.state.name, t.value) for t in study.trials]


def prepare(folder: Path) -> None:
    """Lay out the files the cases point at, inside `folder`."""
    (folder / "runs" / "ensembles").mkdir(parents=True, exist_ok=True)
    _write_study(f"sqlite:///{folder}/runs/optuna.db", KEPT_STUDY, 3)
    _write_study(f"sqlite:///{folder}/runs/optuna.db", "resumed", 1)
    (folder / "runs" / "ensembles" / f"{KEPT_STUDY}-optimized.pt").write_bytes(b"not torch")
    (folder / "bad.db").write_bytes(b"this is not a database\n" * 100)
    (folder / "afile").write_text("a file where a folder is expected\n")
    with contextlib.closing(sqlite3.connect(folder / "other.db")) as other:  # another tool's
        other.execute("CREATE TABLE experiments (id INTEGER)")
        other.commit()
    (folder / "fm_empty").mkdir(exist_ok=True)
    (folder / "fm_corrupt").mkdir(exist_ok=True)
    for name in IDX_FILES:  # a cut-off gzip stream, as an interrupted download leaves
        whole = gzip.compress(bytes([0, 0, 8, 3]) + bytes(12) + bytes(100))
        (folder / "fm_corrupt" / name).write_bytes(whole[:20])


def snapshot(folder: Path) -> dict[str, bytes]:
    """Bytes of the files that stand for "already recorded": no case may change them."""
    names = ("bad.db", "afile", "other.db", f"runs/ensembles/{KEPT_STUDY}-optimized.pt",
             *(f"fm_corrupt/{n}" for n in IDX_FILES))  # fmt: skip
    return {name: (folder / name).read_bytes() for name in names}


@contextlib.contextmanager
def ports() -> Iterator[dict[str, str]]:
    """A port that nothing listens on and one held busy, for the argv placeholders."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        yield {"closed_port": str(closed), "busy_port": str(busy.getsockname()[1])}


def filled(case: Case, values: dict[str, str]) -> tuple[list[str], str]:
    """The case's argv and fragment with the placeholders filled in."""
    return [arg.format(**values) for arg in case.argv], case.fragment.format(**values)
