"""Tables for the callback's fit-end report: rich's when installed (the `search` extra),
else plain aligned text, so the base install prints the same numbers."""

from __future__ import annotations

from typing import Any


class PlainTable:
    """The part of `rich.table.Table` the report uses."""

    def __init__(self, title: str = "") -> None:
        self.title, self.columns, self.rows = title, [], []

    def add_column(self, name: str, justify: str = "left") -> None:
        self.columns.append((name, justify))

    def add_row(self, *cells: str) -> None:
        self.rows.append(list(cells))

    def add_section(self) -> None:
        self.rows.append(None)

    def render(self) -> str:
        cells = [[c for c, _ in self.columns], *[r for r in self.rows if r is not None]]
        widths = [max(len(row[i]) for row in cells) for i in range(len(self.columns))]

        def line(row: list[str]) -> str:
            columns = zip(row, widths, self.columns, strict=True)
            parts = [c.ljust(w) if how == "left" else c.rjust(w) for c, w, (_, how) in columns]
            return "  ".join(parts).rstrip()

        rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
        body = [rule if row is None else line(row) for row in self.rows]
        return "\n".join([self.title, line(cells[0]), rule, *body])


class PlainConsole:
    def print(self, item: Any) -> None:
        print(item.render() if isinstance(item, PlainTable) else item, flush=True)


def console_and_table() -> tuple[Any, type]:
    """(a console, the table class): rich's, or the plain ones without rich."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ModuleNotFoundError:
        return PlainConsole(), PlainTable
    return Console(), Table
