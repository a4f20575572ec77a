"""Weighted ensembles of the best pruned models of an Optuna study.

- :func:`select_members` -- top-k finished, feasible trials (optionally diverse), loaded.
- :class:`WeightedEnsemble` -- simplex-weighted average of members (a LightningModule);
  ``.fast()`` / ``.use_fast()`` -- the same outputs at a cost that follows the nonzero weights
  (:class:`FastEnsemble`, :func:`build_fast`).
- :func:`export_ensemble_onnx` -- the whole ensemble as one ONNX graph.
- :func:`fit_weights` -- uniform / score / optimized / greedy weights from validation data.
- :func:`fit_ensemble`, :func:`evaluate_ensemble` -- build on val, report on test.
- :func:`save_ensemble`, :func:`load_ensemble`, :func:`log_ensemble` -- file and MLflow;
  :func:`load_ensemble_info`, :func:`latest_ensemble_info` read a file's settings and test
  evaluation without building the members (the report does).
- :func:`run_ensemble` -- the `lightning-prune ensemble` command.
"""

from lightning_prune.ensembles import _needs  # noqa: F401  (names the missing extras)
from lightning_prune.ensembles.artifact import (
    ensemble_file,
    ensemble_folder,
    latest_ensemble_info,
    load_ensemble,
    load_ensemble_info,
    log_ensemble,
    save_ensemble,
)
from lightning_prune.ensembles.evaluate import (
    EnsembleReport,
    count_flops,
    evaluate_ensemble,
    report_table,
)
from lightning_prune.ensembles.fast import FastEnsemble, build_fast
from lightning_prune.ensembles.model import COMBINES, WeightedEnsemble, combine_log_probs
from lightning_prune.ensembles.onnx_ensemble import export_ensemble_onnx
from lightning_prune.ensembles.predictions import OutputSizeError, collect_log_probs
from lightning_prune.ensembles.run import (
    EnsembleResult,
    fit_ensemble,
    print_ensemble_result,
    run_ensemble,
)
from lightning_prune.ensembles.selection import (
    DIVERSITIES,
    Member,
    Selection,
    SelectionError,
    open_study,
    select_members,
)
from lightning_prune.ensembles.weighting import WEIGHTINGS, fit_weights

__all__ = [
    "COMBINES",
    "DIVERSITIES",
    "WEIGHTINGS",
    "EnsembleReport",
    "EnsembleResult",
    "FastEnsemble",
    "Member",
    "OutputSizeError",
    "Selection",
    "SelectionError",
    "WeightedEnsemble",
    "build_fast",
    "collect_log_probs",
    "combine_log_probs",
    "count_flops",
    "ensemble_file",
    "ensemble_folder",
    "evaluate_ensemble",
    "export_ensemble_onnx",
    "fit_ensemble",
    "fit_weights",
    "latest_ensemble_info",
    "load_ensemble",
    "load_ensemble_info",
    "log_ensemble",
    "open_study",
    "print_ensemble_result",
    "report_table",
    "run_ensemble",
    "save_ensemble",
    "select_members",
]
