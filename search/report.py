"""Tables of a study: the top trials (single objective) or the Pareto front.

Kept apart from the search itself: the `report` command only reads the storage.
A later issue adds figures here.
"""

from __future__ import annotations

from typing import Any

import optuna
from lightning_prune.search.storage import counted_trials, retried_numbers
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.table import Table


def state_counts(study: optuna.Study) -> dict[str, int]:
    """complete / pruned / fail / running / waiting, plus retried (re-queued) failures."""
    trials = study.get_trials(deepcopy=False)
    counted = counted_trials(trials)
    counts = {name: 0 for name in ("complete", "pruned", "fail", "running", "waiting")}
    for trial in counted:
        key = trial.state.name.lower()
        if key in counts:
            counts[key] += 1
    counts["retried"] = len(retried_numbers(trials))
    return counts


def is_feasible(trial: FrozenTrial) -> bool:
    return all(v <= 0 for v in trial.constraints.values())


def best_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Feasible complete trials, best first (single objective), or the feasible front."""
    if len(study.directions) > 1:
        front = study.best_trials
        return sorted(front, key=lambda t: -t.values[0])
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    feasible = [t for t in complete if is_feasible(t) and t.value is not None]
    return sorted(feasible, key=lambda t: -t.value)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _recipe(trial: FrozenTrial) -> str:
    parts = []
    for name, value in trial.params.items():
        parts.append(f"{name}={value:.3g}" if isinstance(value, float) else f"{name}={value}")
    return " ".join(parts)


def trials_table(study: optuna.Study, top_k: int = 5) -> Table:
    """The top feasible trials (or the Pareto front) with recipe, sparsity and accuracy."""
    multi = len(study.directions) > 1
    rows = best_trials(study)[:top_k] if not multi else best_trials(study)
    counts = state_counts(study)
    title = (
        f"study {study.study_name}: "
        f"{'Pareto front' if multi else f'top {min(top_k, len(rows))} feasible trials'} "
        f"({counts['complete']} complete, {counts['pruned']} pruned, {counts['fail']} failed)"
    )
    table = Table(title=title, header_style="bold")
    for column in ("trial", "val_acc", "test_acc", "sparsity", "nonzero", "recipe"):
        table.add_column(column, justify="left" if column == "recipe" else "right")
    for trial in rows:
        attrs = trial.user_attrs
        table.add_row(
            str(trial.number),
            _fmt(attrs.get("val_acc")),
            _fmt(attrs.get("test_acc")),
            _fmt(attrs.get("sparsity")),
            _fmt(attrs.get("nonzero_params")),
            _recipe(trial),
        )
    return table


def print_report(study: optuna.Study, top_k: int = 5, console: Console | None = None) -> None:
    """Print the table and where the study's runs are in MLflow."""
    if console is None:
        console = Console()
        console = console if console.is_terminal else Console(width=160)
    if not best_trials(study):
        console.print(
            f"study {study.study_name}: no feasible complete trial yet {state_counts(study)}"
        )
    else:
        console.print(trials_table(study, top_k))
    attrs = study.user_attrs
    if attrs.get("mlflow_parent_run_id"):
        console.print(
            f"MLflow: parent run {attrs['mlflow_parent_run_id']} (experiment "
            f"'{attrs.get('experiment')}') at {attrs.get('tracking_uri')}; one child run per "
            "trial. Open: lightning-prune ui"
        )
