"""The study's table, for the terminal (rich) and for report.md (markdown), from one row builder."""

from __future__ import annotations

import math
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.table import Table

from lightning_prune.console import make_console
from lightning_prune.search.contract import (
    TrialAttr,
    best_trials,
    curve_of,
    ranked_trials,
    state_counts,
    tracking_of,
)
from lightning_prune.search.pruners import NO_REASON

COLUMNS = ("trial", "val_acc", "test_acc", "sparsity", "nonzero", "status", "recipe")
STATUS_WIDTH = 60  # the terminal shows the start of a stop reason; report.md shows all of it


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


def last_value(trial: FrozenTrial) -> float | None:
    """val_acc of a complete trial; the last reported value of a stopped or failed one."""
    value = None
    if trial.state == TrialState.COMPLETE:
        value = trial.user_attrs.get(TrialAttr.VAL_ACC)
        if value is None and trial.values:
            value = trial.values[0]
    if value is None and trial.intermediate_values:
        value = trial.intermediate_values[max(trial.intermediate_values)]
    curve = curve_of(trial)
    if value is None and curve and isinstance(curve[-1], dict):
        value = curve[-1].get(TrialAttr.VAL_ACC)
    return value


def stop_reason_of(trial: FrozenTrial) -> str | None:
    """Why a stopped (PRUNED) trial was stopped; None for any other state, so a failed trial
    that recorded a reason before failing is never shown as stopped."""
    if trial.state != TrialState.PRUNED:
        return None
    return str(trial.user_attrs.get(TrialAttr.PRUNED_REASON) or "").strip() or NO_REASON


def status(trial: FrozenTrial, width: int | None = None) -> str:
    """`complete`, or `stopped: <reason>`: its first line cut to `width` characters."""
    reason = stop_reason_of(trial)
    if reason is None:
        return trial.state.name.lower()
    text = f"stopped: {reason}"
    if width is not None:
        text = text.splitlines()[0]
        text = text if len(text) <= width else text[: width - 1].rstrip() + "…"
    return text


def table_rows(trials: list[FrozenTrial], width: int | None = None) -> list[tuple[str, ...]]:
    """One row of COLUMNS per trial; `width` cuts the status cell (None: keep all of it)."""
    rows = []
    for trial in trials:
        attrs = trial.user_attrs
        rows.append((
            str(trial.number),
            fmt(last_value(trial)),
            fmt(attrs.get(TrialAttr.TEST_ACC)),
            fmt(attrs.get(TrialAttr.SPARSITY)),
            fmt(attrs.get(TrialAttr.NONZERO_PARAMS)),
            status(trial, width),
            recipe(trial.params),
        ))  # fmt: skip
    return rows


def stopped_trials(study: optuna.Study, top_k: int) -> list[FrozenTrial]:
    """The `top_k` stopped trials with the best last value: the ones whose stop matters most."""
    stopped = study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))

    def rank(trial: FrozenTrial) -> tuple[float, int]:
        value = last_value(trial)
        return (-value if value is not None and math.isfinite(value) else math.inf, trial.number)

    return sorted(stopped, key=rank)[:top_k]


def shown_trials(study: optuna.Study, top_k: int) -> list[FrozenTrial]:
    """The top-k feasible trials (or the whole Pareto front with several objectives), then
    the top-k stopped trials, each with why it was stopped."""
    best = best_trials(study) if len(study.directions) > 1 else ranked_trials(study)[:top_k]
    return best + stopped_trials(study, top_k)


def trials_table(study: optuna.Study, top_k: int = 5) -> Table:
    """The top feasible trials (or the Pareto front) with recipe, sparsity and accuracy, and
    the best stopped trials with why they were stopped."""
    multi = len(study.directions) > 1
    rows = shown_trials(study, top_k)
    stopped = sum(t.state == TrialState.PRUNED for t in rows)
    best = len(rows) - stopped
    counts = state_counts(study)
    title = (
        f"study {study.study_name}: "
        f"{'Pareto front' if multi else f'top {best} feasible trials'}"
        f"{f' and the {stopped} best stopped' if stopped else ''} "
        f"({counts['complete']} complete, {counts['pruned']} pruned, {counts['fail']} failed)"
    )
    table = Table(title=title, header_style="bold")
    for column in COLUMNS:
        if column in ("status", "recipe"):  # wrap to the width left; fold a long token
            table.add_column(column, overflow="fold")
        else:  # short numbers: never split across lines
            table.add_column(column, justify="right", no_wrap=True)
    for row in table_rows(rows, width=STATUS_WIDTH):
        table.add_row(*row)
    return table


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\r\n", "\n").replace("\n", "<br>")


def markdown_table(trials: list[FrozenTrial]) -> list[str]:
    """The same table as markdown lines, stop reasons in full."""
    align = ["---" if c in ("status", "recipe") else "---:" for c in COLUMNS]
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join(align) + "|"]
    rows = table_rows(trials)
    return lines + ["| " + " | ".join(_markdown_cell(c) for c in row) + " |" for row in rows]


def print_report(study: optuna.Study, top_k: int = 5, console: Console | None = None) -> None:
    """Print the table and where the study's runs are in MLflow."""
    if console is None:
        console = make_console()
    if not best_trials(study):
        console.print(
            f"study {study.study_name}: no feasible complete trial yet {state_counts(study)}"
        )
    if shown_trials(study, top_k):
        console.print(trials_table(study, top_k))
    tracking = tracking_of(study)
    if tracking.parent_run_id:
        console.print(
            f"MLflow: parent run {tracking.parent_run_id} (experiment "
            f"'{tracking.experiment}') at {tracking.uri}; one child run per "
            "trial. Open: lightning-prune ui"
        )
