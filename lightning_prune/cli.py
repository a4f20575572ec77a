"""`lightning-prune <command> [overrides...]`: every override is a Hydra override of conf/."""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import signal
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lightning_prune.config import ConfigError, config_groups, load_config
from lightning_prune.console import print_error
from lightning_prune.preflight import (
    PreflightError,
    check_folder,
    check_name,
    check_tracking,
    first_line,
)

FAILURE = 1  # it ran and failed (or ended without a result)
USAGE_ERROR = 2  # bad input, or something an option names is unusable: nothing ran
INTERRUPTED = 130  # Ctrl-C
TERMINATED = 128 + signal.SIGTERM  # 143: stopped by SIGTERM (a scheduler, `kill`)
DEBUG_ENV = "LIGHTNING_PRUNE_DEBUG"  # =1: unexpected errors keep their traceback


def _train(cfg: DictConfig) -> int:
    from lightning_prune.console import print_train_result
    from lightning_prune.train import run_train

    result = run_train(cfg)
    print_train_result(result, cfg.tracking.uri, cfg.tracking.experiment)
    return 0


def _check_ensemble(cfg: DictConfig) -> None:
    """Names, storage, output folder and the study's tracking store, before any member loads."""
    from lightning_prune.ensembles import ensemble_folder
    from lightning_prune.ensembles.run import study_location
    from lightning_prune.search import StudyNotFoundError, load_study, tracking_of
    from lightning_prune.search.study import check_storage_usable

    storage, name = study_location(cfg)
    prefix = "ensemble" if cfg.ensemble.study_name else "search"
    if name is not None:
        check_name(name, f"{prefix}.study_name")
    check_storage_usable(storage, "ensemble.storage" if cfg.ensemble.storage else "search.storage")
    output = cfg.ensemble.output
    if output and Path(output).is_dir():
        raise PreflightError(f"ensemble.output={output} is a folder; name a file (e.g. ens.pt)")
    folder = Path(output).parent if output else ensemble_folder(cfg.output_dir)
    check_folder(folder, "ensemble.output" if output else "output_dir")
    try:
        study = load_study(storage, name, create_storage=False)
    except StudyNotFoundError:
        return  # the command itself names the studies there
    if not output:
        check_name(study.study_name, "the study's name (set ensemble.output=<file> instead)")
    if cfg.ensemble.log_mlflow:
        check_tracking(tracking_of(study).uri or cfg.tracking.uri)


def _ensemble(cfg: DictConfig) -> int:
    from lightning_prune.ensembles import OutputSizeError, SelectionError
    from lightning_prune.ensembles.run import print_ensemble_result, run_ensemble

    _check_ensemble(cfg)
    try:
        result = run_ensemble(cfg)
    except (SelectionError, OutputSizeError) as err:
        print_error("ensemble", str(err))
        return USAGE_ERROR
    print_ensemble_result(result)
    return 0


def _no_complete_trial(study) -> str:
    """Why a search ended without a result: the state counts and the latest failure."""
    from optuna.trial import TrialState

    from lightning_prune.search import TrialAttr, state_counts

    counts = state_counts(study)
    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    reasons = [t for t in failed if t.user_attrs.get(TrialAttr.FAIL_REASON)]
    last = ""
    if reasons:
        trial = reasons[-1]
        last = f"; last failure (trial {trial.number}): "
        last += first_line(trial.user_attrs[TrialAttr.FAIL_REASON])
    what = "every trial this run finished failed" if counts["complete"] else "no trial completed"
    return (
        f"study {study.study_name!r}: {what} ({counts['complete']} complete, "
        f"{counts['pruned']} pruned, {counts['fail']} failed in the study){last}"
    )


def _search(cfg: DictConfig) -> int:
    from lightning_prune.report import print_report
    from lightning_prune.search import StudyAttr, run_search

    study = run_search(cfg)
    print_report(study, top_k=int(cfg.search.top_k))
    outcome = study.user_attrs.get(StudyAttr.LAST_OUTCOME)
    if outcome in ("interrupted", "terminated"):
        print("Stopped: the running trial is recorded as failed (not counted). Run the same "
              "command again to add search.n_trials more; with search.max_trials set it "
              "finishes the study instead.", file=sys.stderr)  # fmt: skip
        return INTERRUPTED if outcome == "interrupted" else TERMINATED
    if outcome == "incomplete":
        print("Workers stopped before search.n_trials were done (see the failed trials); "
              "run the same command again to continue.", file=sys.stderr)  # fmt: skip
        return FAILURE
    if outcome == "failed":
        print_error("search", _no_complete_trial(study))
        return FAILURE
    return 0


def _newest_ensemble(cfg: DictConfig, study_name: str) -> Path | None:
    from lightning_prune.ensembles import ensemble_file, ensemble_folder

    pattern = ensemble_file("", study_name, "*").name
    files = sorted(ensemble_folder(cfg.output_dir).glob(pattern), key=lambda p: p.stat().st_mtime)
    return files[-1] if files else None


def _check_report(cfg: DictConfig, study) -> None:
    """The report's folder, the study's tracking store and the ensemble file it reads."""
    from lightning_prune.ensembles import load_ensemble_info
    from lightning_prune.search import tracking_of

    check_folder(Path(cfg.output_dir) / "reports" / study.study_name, "output_dir")
    uri = tracking_of(study).uri
    if uri:
        check_tracking(uri, "the study's tracking URI")
    newest = _newest_ensemble(cfg, study.study_name)
    if newest is None:
        return
    try:
        load_ensemble_info(newest)
    except (OSError, EOFError, ValueError, KeyError, RuntimeError, pickle.UnpicklingError) as err:
        raise PreflightError(
            f"ensemble file {newest} cannot be read ({type(err).__name__}: "
            f"{first_line(err).split('. ')[0]}); "
            "delete it or run `lightning-prune ensemble` again"
        ) from None


def _report(cfg: DictConfig) -> int:
    from lightning_prune.report import print_report, run_report
    from lightning_prune.search import StudyNotFoundError, load_study
    from lightning_prune.search.study import check_storage_usable, check_top_k

    check_top_k(cfg.search.top_k)
    check_name(cfg.search.study_name, "search.study_name")
    check_storage_usable(cfg.search.storage)
    try:
        study = load_study(cfg.search.storage, cfg.search.study_name, create_storage=False)
    except StudyNotFoundError as err:
        print_error("report", f"{err}; check search.storage and search.study_name")
        return USAGE_ERROR
    _check_report(cfg, study)
    print_report(study, top_k=int(cfg.search.top_k))
    report = run_report(cfg, study)
    print(
        f"Report: {report.markdown} with {len(report.figures)} figures "
        f"({', '.join(p.name for p in report.figures.values())}); also in the study's MLflow run"
    )
    return 0


COMMANDS: dict[str, tuple[str, Callable[[DictConfig], int]]] = {
    "train": ("train one model (with the configured pruning) and test it", _train),
    "search": ("Optuna search over pruning recipes", _search),
    "ensemble": ("weighted ensemble of a study's top-k pruned models", _ensemble),
    "report": ("summary table and figures of a study", _report),
    "ui": ("open the MLflow UI on the tracking store (127.0.0.1)", None),
}


class _Parser(argparse.ArgumentParser):
    """argparse with its error on one line, like every other error of the CLI."""

    def error(self, message: str):
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    groups = "\n".join(f"  {g:<10} {', '.join(opts)}" for g, opts in config_groups().items())
    parser = _Parser(
        prog="lightning-prune",
        description="Adaptive pruning for PyTorch Lightning, searched with Optuna, "
        "ensembled, tracked in MLflow.",
        epilog="Config groups (choose with GROUP=OPTION, set keys with group.key=value):\n"
        f"{groups}\n\nExample: lightning-prune train model=lenet5 trainer.max_epochs=3 "
        "data.subset=5000",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_text, _) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.add_argument("--cfg", action="store_true", help="print the composed config and exit")
        if name == "ui":
            cmd.add_argument("--port", type=int, default=5000, help="port (default 5000)")
        cmd.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=lenet5")
    return parser


def _quiet_libraries() -> None:
    """Keep the terminal for our own tables: hide library banners and known deprecations."""
    import pytorch_lightning  # noqa: F401  (sets its own log level on import: do it first)

    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings(
        "ignore", message=r".*(LeafSpec|log_every_n_steps|num_workers|Heartbeat of storage).*"
    )


def _known_failures() -> tuple[type[BaseException], ...]:
    """Runtime failures of files, stores and devices: one line, not a traceback."""
    from lightning_fabric.utilities.exceptions import MisconfigurationException
    from mlflow.exceptions import MlflowException
    from optuna.exceptions import StorageInternalError
    from sqlalchemy.exc import SQLAlchemyError

    from lightning_prune.data import DataFileError

    return (OSError, EOFError, pickle.UnpicklingError, SQLAlchemyError, StorageInternalError,
            MlflowException, MisconfigurationException, DataFileError)  # fmt: skip


def _run(args: argparse.Namespace) -> int:
    cfg = load_config(args.overrides)
    if args.cfg:
        print(OmegaConf.to_yaml(cfg))
        return 0
    from lightning_prune.ui_server import run_ui

    return run_ui(cfg.tracking.uri, args.port)


def _guarded(command: str, body: Callable[[], int]) -> int:
    """Run `body`; a known failure becomes one line on stderr and its exit code."""
    try:
        return body()
    except SystemExit as stop:  # Lightning's Trainer stops on SIGTERM with a bare one: 0
        if type(stop).__name__ != "SIGTERMException":
            raise
        print_error(command, "stopped by SIGTERM")
        return TERMINATED
    except KeyboardInterrupt:  # outside a search trial (those the search stops itself)
        print_error(command, "interrupted (Ctrl-C)")
        return INTERRUPTED
    except ConfigError as err:
        print_error(command, str(err))
        return USAGE_ERROR
    except _known_failures() as err:
        if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        print_error(command, f"{type(err).__name__}: {first_line(err)} "
                    f"(set {DEBUG_ENV}=1 for the traceback)")  # fmt: skip
        return FAILURE


def _hydra_command(command: str, rest: list[str]) -> int:
    """train / search / ensemble / report: a Hydra application (lightning_prune.hydra_app)."""
    from lightning_prune import hydra_app

    handler = COMMANDS[command][1]
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")

    def job(overrides: list[str]) -> int:
        def body() -> int:
            cfg = load_config(overrides)
            root = Path(cfg.paths.root)
            print(f"lightning-prune {command}: paths.root={root} ({root.resolve()})", flush=True)
            return handler(cfg)

        return _guarded(command, body)

    return _guarded(command, lambda: hydra_app.run(command, rest, job, full_errors=debug))


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code (0 ok, 1 failed, 2 bad input, 130 Ctrl-C,
    143 SIGTERM)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-sc"], ["--shell-completion"]) and argv[1:2] == ["query=bash"]:
        from lightning_prune.hydra_app import complete

        asked = complete([c for c in COMMANDS if c != "ui"])
        if asked is None or asked[0] not in COMMANDS:
            return 0
        argv = [asked[0], *asked[1]]
    if argv and argv[0] in COMMANDS and argv[0] != "ui":
        _quiet_libraries()
        return _hydra_command(argv[0], argv[1:])
    try:
        args = _parser().parse_args(argv)
    except SystemExit as stop:  # --help, or argparse's one-line error
        return stop.code if isinstance(stop.code, int) else USAGE_ERROR
    _quiet_libraries()
    return _guarded(args.command, lambda: _run(args))


if __name__ == "__main__":
    sys.exit(main())
