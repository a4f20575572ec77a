"""The study's table, for the terminal (rich) and for report.md (markdown), from one row builder."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import FrozenTrial
from rich.console import Console
from rich.table import Table

from lightning_prune.search.contract import (
    TrialAttr,
    best_trials,
    ranked_trials,
    state_counts,
    tracking_of,
)

COLUMNS = ("trial", "val_acc", "test_acc", "sparsity", "nonzero", "recipe")


def fmt(value: Any, digits: int = 4) -> str:
    """A table cell: floats to `digits` decimals, ints with thousands separators, None as -."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def recipe(params: dict[str, Any]) -> str:
    """The searched parameters of a trial on one line, e.g. `criterion=taylor lr=0.00123`."""
    return " ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )


def table_rows(trials: list[FrozenTrial]) -> list[tuple[str, ...]]:
    """One row of COLUMNS per trial."""
    rows = []
    for trial in trials:
        attrs = trial.user_attrs
        rows.append((
            str(trial.number),
            fmt(attrs.get(TrialAttr.VAL_ACC)),
            fmt(attrs.get(TrialAttr.TEST_ACC)),
            fmt(attrs.get(TrialAttr.SPARSITY)),
            fmt(attrs.get(TrialAttr.NONZERO_PARAMS)),
            recipe(trial.params),
        ))  # fmt: skip
    return rows


def shown_trials(study: optuna.Study, top_k: int) -> list[FrozenTrial]:
    """The top-k feasible trials, or the whole Pareto front with several objectives."""
    return best_trials(study) if len(study.directions) > 1 else ranked_trials(study)[:top_k]


def trials_table(study: optuna.Study, top_k: int = 5) -> Table:
    """The top feasible trials (or the Pareto front) with recipe, sparsity and accuracy."""
    multi = len(study.directions) > 1
    rows = shown_trials(study, top_k)
    counts = state_counts(study)
    title = (
        f"study {study.study_name}: "
        f"{'Pareto front' if multi else f'top {min(top_k, len(rows))} feasible trials'} "
        f"({counts['complete']} complete, {counts['pruned']} pruned, {counts['fail']} failed)"
    )
    table = Table(title=title, header_style="bold")
    for column in COLUMNS:
        table.add_column(column, justify="left" if column == "recipe" else "right")
    for row in table_rows(rows):
        table.add_row(*row)
    return table


def markdown_table(trials: list[FrozenTrial]) -> list[str]:
    """The same table as markdown lines."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|---:|---:|---:|---:|---:|---|"]
    return lines + ["| " + " | ".join(row) + " |" for row in table_rows(trials)]


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
    tracking = tracking_of(study)
    if tracking.parent_run_id:
        console.print(
            f"MLflow: parent run {tracking.parent_run_id} (experiment "
            f"'{tracking.experiment}') at {tracking.uri}; one child run per "
            "trial. Open: lightning-prune ui"
        )
