"""`lightning-prune <command> [overrides...]`: every override is a Hydra override of conf/."""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import warnings
from collections.abc import Callable

from omegaconf import DictConfig, OmegaConf

from lightning_prune.config import ConfigError, config_groups, load_config

USAGE_ERROR = 2  # bad input: nothing ran


def _train(cfg: DictConfig) -> int:
    from lightning_prune.console import print_train_result
    from lightning_prune.train import run_train

    result = run_train(cfg)
    print_train_result(result, cfg.tracking.uri, cfg.tracking.experiment)
    return 0


def _ensemble(cfg: DictConfig) -> int:
    from lightning_prune.ensembles import OutputSizeError, SelectionError
    from lightning_prune.ensembles.run import print_ensemble_result, run_ensemble

    try:
        result = run_ensemble(cfg)
    except (SelectionError, OutputSizeError) as err:
        print(f"lightning-prune ensemble: error: {err}", file=sys.stderr)
        return USAGE_ERROR
    print_ensemble_result(result)
    return 0


def _search(cfg: DictConfig) -> int:
    from lightning_prune.report import print_report
    from lightning_prune.search import StudyAttr, run_search

    study = run_search(cfg)
    print_report(study, top_k=int(cfg.search.top_k))
    outcome = study.user_attrs.get(StudyAttr.LAST_OUTCOME)
    if outcome == "interrupted":
        print("Interrupted: run the same command again to resume the study.", file=sys.stderr)
        return 130
    if outcome == "incomplete":
        print("Workers stopped before search.n_trials were done (see the failed trials); "
              "run the same command again to continue.", file=sys.stderr)  # fmt: skip
        return 1
    return 0


def _report(cfg: DictConfig) -> int:
    from lightning_prune.report import print_report, run_report
    from lightning_prune.search import StudyNotFoundError, load_study

    try:
        study = load_study(cfg.search.storage, cfg.search.study_name)
    except StudyNotFoundError:
        where = f"{cfg.search.study_name!r} in {cfg.search.storage}"
        print(f"lightning-prune report: error: no study {where} (set search.study_name "
              "and search.storage)", file=sys.stderr)  # fmt: skip
        return USAGE_ERROR
    print_report(study, top_k=int(cfg.search.top_k))
    report = run_report(cfg, study)
    print(
        f"Report: {report.markdown} with {len(report.figures)} figures "
        f"({', '.join(p.name for p in report.figures.values())}); also in the study's MLflow run"
    )
    return 0


def _ui(cfg: DictConfig, port: int) -> int:
    from lightning_prune.tracking import prepare_store

    prepare_store(cfg.tracking.uri)
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", cfg.tracking.uri,
               "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    print(f"MLflow UI for {cfg.tracking.uri} on http://127.0.0.1:{port} (Ctrl-C to stop)")
    return subprocess.call(command)


COMMANDS: dict[str, tuple[str, Callable[[DictConfig], int]]] = {
    "train": ("train one model (with the configured pruning) and test it", _train),
    "search": ("Optuna search over pruning recipes", _search),
    "ensemble": ("weighted ensemble of a study's top-k pruned models", _ensemble),
    "report": ("summary table and figures of a study", _report),
    "ui": ("open the MLflow UI on the tracking store (127.0.0.1)", None),
}


def _parser() -> argparse.ArgumentParser:
    groups = "\n".join(f"  {g:<10} {', '.join(opts)}" for g, opts in config_groups().items())
    parser = argparse.ArgumentParser(
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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _quiet_libraries()
    try:
        cfg = load_config(args.overrides)
    except ConfigError as err:
        print(f"lightning-prune {args.command}: error: {err}", file=sys.stderr)
        return USAGE_ERROR
    if args.cfg:
        print(OmegaConf.to_yaml(cfg))
        return 0
    if args.command == "ui":
        return _ui(cfg, args.port)
    try:
        return COMMANDS[args.command][1](cfg)
    except ConfigError as err:
        print(f"lightning-prune {args.command}: error: {err}", file=sys.stderr)
        return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
