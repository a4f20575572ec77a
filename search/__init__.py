"""Optuna search over pruning recipes (installed as `lightning_prune.search`).

Public API:

- :func:`run_search` -- run, resume or join the study of `cfg.search`; returns the Study.
- :class:`TrialReporter` -- the pytorch_lightning callback that reports to a trial.
- :class:`SparsityMatchedPruner` -- the default trial pruner: a median rule among completed
  trials that were at least as sparse at the same validation.
- The study contract (:mod:`lightning_prune.search.contract`), for everything that reads a
  study: :func:`load_study`, :class:`TrialAttr` / :class:`StudyAttr` (attribute keys),
  :func:`is_feasible`, :func:`curve_of`, :func:`ranked_trials`, :func:`best_trials`,
  :func:`state_counts`,
  :func:`tracking_of` (the study's MLflow runs), :func:`checkpoint_path` /
  :func:`checkpoint_roots` (where a trial's model is, also in a copied `runs/` folder).
- :func:`optuna_figures` -- Optuna's own plots of a study (used by the report too).
"""

from __future__ import annotations

from lightning_prune.search import _needs  # noqa: F401  (names the missing extras)
from lightning_prune.search.contract import (
    DEFAULT_STORAGE,
    CurvePoint,
    StudyAttr,
    StudyNotFoundError,
    StudyTracking,
    TrialAttr,
    best_trials,
    checkpoint_path,
    checkpoint_roots,
    curve_of,
    is_feasible,
    load_study,
    parse_storage,
    ranked_trials,
    state_counts,
    tracking_of,
)
from lightning_prune.search.optuna_plots import optuna_figures
from lightning_prune.search.pruners import SparsityMatchedPruner
from lightning_prune.search.reporter import NonFiniteLossError, TrialReporter
from lightning_prune.search.study import run_search, validate

__all__ = [
    "DEFAULT_STORAGE",
    "CurvePoint",
    "NonFiniteLossError",
    "SparsityMatchedPruner",
    "StudyAttr",
    "StudyNotFoundError",
    "StudyTracking",
    "TrialAttr",
    "TrialReporter",
    "best_trials",
    "checkpoint_path",
    "checkpoint_roots",
    "curve_of",
    "is_feasible",
    "load_study",
    "optuna_figures",
    "parse_storage",
    "ranked_trials",
    "run_search",
    "state_counts",
    "tracking_of",
    "validate",
]
