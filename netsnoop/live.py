"""A live, redrawn-in-place view for the summarising tools on a terminal.

The same :class:`~netsnoop.output.Column` lists that drive the plain-text output
drive the tables here, so the live view shows exactly bcc's columns, just redrawn
instead of scrolled. Only used on a TTY; pipes and files get the plain text.
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from netsnoop.output import Column


def use_live(no_clear: bool, json: bool) -> bool:
    """bcc clears the screen between intervals unless -C; on a TTY we redraw instead."""
    return not no_clear and not json and sys.stdout.isatty()


def table(columns: Sequence[Column], rows: Sequence[Sequence[Any]]) -> Table:
    shown = [(i, c) for i, c in enumerate(columns) if c.text]
    t = Table(box=None, pad_edge=False, header_style="bold")
    for _i, c in shown:
        t.add_column(c.header, justify="right" if c.align == ">" else "left", no_wrap=True,
                     max_width=c.width if c.truncate and c.width else None)
    for r in rows:
        t.add_row(*(format(r[i], c.spec) for i, c in shown))
    return t


class LiveView:
    """Redraws a title line and some tables once per interval, in place."""

    def __init__(self) -> None:
        self.console = Console()
        # stderr stays stderr: messages and the summary must not land inside the view
        self.live = Live(console=self.console, auto_refresh=False, transient=False,
                         redirect_stdout=False, redirect_stderr=False)
        self.live.start()

    def show(self, title: str | None, tables: Sequence[tuple[Sequence[Column], Sequence[Sequence[Any]]]]) -> None:
        parts: list[Any] = [Text(title, style="bold"), Text("")] if title else []
        for columns, rows in tables:
            if rows:
                parts.append(table(columns, rows))
                parts.append(Text(""))
        self.live.update(Group(*parts), refresh=True)

    def close(self) -> None:
        self.live.stop()
