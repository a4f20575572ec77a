"""Optuna search over pruning recipes (installed as `lightning_prune.search`).

Public API:

- :func:`run_search` -- run, resume or join the study of `cfg.search`; returns the Study.
- :func:`load_study` -- open a finished or running study by storage URL and name.
- :class:`TrialReporter` -- the pytorch_lightning callback that reports to a trial.
- :class:`SparsityMatchedPruner` -- the default trial pruner: a median rule among completed
  trials that were at least as sparse at the same validation.
- :func:`print_report`, :func:`trials_table`, :func:`best_trials` -- the result tables.

What a study holds (the contract with `lightning_prune.ensembles`):

- `trial.value` (single objective) is the final `val_acc`; in the Pareto mode
  `trial.values` = [val_acc, sparsity] (or [val_acc, latency_ms]).
- Feasibility uses Optuna 5 constraints: `trial.constraints` maps each stated demand
  (`min_sparsity`, `max_nonzero_params`, `max_flops`, `max_latency_ms`) to a violation,
  feasible when every value is <= 0 (also stored as user attr `feasible`);
  `study.best_trial` / `study.best_trials` consider feasible trials only.
- Each COMPLETE trial's user attrs: `checkpoint` (absolute path of
  `<output_dir>/studies/<study>/trial_<n>/model.pt`, saved with
  `lightning_prune.checkpoint.save_model`), `mlflow_run_id`, `sparsity`,
  `nonzero_params`, `flops`, `val_acc`, `test_acc`; also `curve` (one point per validation,
  kept up to date while the trial runs), `duration_s`, `worker`.
  PRUNED trials carry the same minus `checkpoint`/`test_acc`; FAIL trials carry
  `fail_reason` (and `interrupted` after Ctrl-C).
- Study user attrs: `mlflow_parent_run_id`, `tracking_uri`, `experiment`, `config`.
"""

from __future__ import annotations

import optuna
from lightning_prune.search.pruners import SparsityMatchedPruner
from lightning_prune.search.report import best_trials, print_report, state_counts, trials_table
from lightning_prune.search.reporter import NonFiniteLossError, TrialReporter
from lightning_prune.search.storage import make_storage
from lightning_prune.search.study import run_search, validate

__all__ = [
    "NonFiniteLossError",
    "SparsityMatchedPruner",
    "TrialReporter",
    "best_trials",
    "load_study",
    "print_report",
    "run_search",
    "state_counts",
    "trials_table",
    "validate",
]


def load_study(storage: str, study_name: str) -> optuna.Study:
    """Open `study_name` in `storage` (sqlite:///..., journal:///..., postgresql://...)."""
    return optuna.load_study(study_name=study_name, storage=make_storage(storage, None, None))
