"""Rich tables for what the commands print."""

from __future__ import annotations

import os
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

PIPED_WIDTH = 100  # rich's default when piped is 80; a log or file is read wider, not unbounded


def make_console(**kwargs: Any) -> Console:
    """A Console at the terminal's width, or PIPED_WIDTH columns when piped: tables then wrap
    to a width a log viewer shows whole. An exported COLUMNS still wins."""
    console = Console(**kwargs)
    if console.is_terminal or os.environ.get("COLUMNS") or "width" in kwargs:
        return console
    return Console(width=PIPED_WIDTH, **kwargs)


console = make_console()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def key_value_table(title: str, rows: dict[str, Any]) -> Table:
    """A two-column table of named values."""
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("metric", overflow="fold")
    table.add_column("value", justify="right", overflow="fold")
    for key, value in rows.items():
        table.add_row(key, _fmt(value))
    return table


def print_train_result(result: Any, uri: str, experiment: str) -> None:
    """The `train` command's closing table and where the run was recorded."""
    rows = {k: result.metrics[k] for k in ("test_acc", "test_loss", "val_acc", "val_loss")
            if k in result.metrics}  # fmt: skip
    if result.pruning:
        rows["sparsity"] = result.pruning.get("sparsity")
        rows["nonzero params"] = result.pruning.get("nonzero_params")
        rows["total params"] = result.pruning.get("total_params")
    usage = result.extra.get("dynamic_usage") if hasattr(result, "extra") else None
    if usage is not None and usage.samples:
        rows["executed MACs / dense (gated)"] = usage.mean_fraction
    rows["train + test seconds"] = f"{result.seconds:.1f}"
    console.print(key_value_table("lightning-prune train", rows))
    if result.run_id:
        console.print(f"Recorded: MLflow run {result.run_id} (experiment '{experiment}') at {uri}")
        console.print(f"Model: {result.checkpoint}   Browse runs: lightning-prune ui")


def print_error(command: str, message: str) -> None:
    """`lightning-prune <command>: error: <message>` on stderr, always one line (scripts and
    people read the first line; a wrapped or multi-line message hides the option it names)."""
    text = " ".join(str(message).split())
    print(f"lightning-prune {command}: error: {text}", file=sys.stderr, flush=True)
