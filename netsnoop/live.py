"""A live, redrawn-in-place view for the summarising tools on a terminal.

The same :class:`~netsnoop.output.Column` lists that drive the plain-text output
drive the tables here, so the live view shows bcc's columns, redrawn instead of
scrolled, and fitted to the terminal: a text column is shortened or dropped before
a number is ever cut, and rows that do not fit are counted ("... N more"). Every
cell is a plain :class:`rich.text.Text` (never markup: process names are chosen by
whoever runs the process) with control characters shown escaped. ``q`` ends the
trace as Ctrl-C does. Only used on a TTY; pipes and files get the plain text.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import termios
import threading
import tty
from typing import Any, Sequence

from rich.cells import cell_len, set_cell_size
from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from netsnoop.fmt import printable
from netsnoop.output import Column

MIN_TEXT = 4  # a shortened text column keeps this many cells (3 and the ellipsis)
QUIT_KEYS = b"qQ"


def use_live(no_clear: bool, json: bool) -> bool:
    """bcc clears the screen between intervals unless -C; on a TTY we redraw instead."""
    return not no_clear and not json and sys.stdout.isatty()


def _cell(text: str, width: int, align: str) -> str:
    """``text`` in exactly ``width`` terminal cells: padded, or cut with an ellipsis."""
    if cell_len(text) > width:
        return set_cell_size(text, max(width - 1, 0)) + "…" if width else ""
    pad = " " * (width - cell_len(text))
    return pad + text if align == ">" else text + pad


def fit(columns: Sequence[Column], cells: Sequence[Sequence[str]], width: int,
        drop: Sequence[str]) -> list[tuple[int, int]]:
    """(index into ``columns``, width) of the columns to show in ``width`` cells.

    Columns keep their declared widths (bcc's, steady from one interval to the next)
    where those fit; otherwise each gets what its widest cell needs. If that is still
    too wide, truncating text columns are shortened to MIN_TEXT, then the columns
    named in ``drop`` are left out, in that order. The others (numbers, addresses
    with their ports) are never cut here.
    """
    need = {i: max([cell_len(c.header)] + [cell_len(row[i]) for row in cells]) for i, c in enumerate(columns)}
    for i, c in enumerate(columns):
        if c.truncate and c.width:
            need[i] = min(need[i], max(c.width, cell_len(c.header)))
    keep = list(range(len(columns)))

    def excess(widths: dict[int, int]) -> int:
        return sum(widths[i] for i in keep) + len(keep) - 1 - width

    steady = {i: max(need[i], c.width) for i, c in enumerate(columns)}
    if excess(steady) <= 0:
        return [(i, steady[i]) for i in keep]
    for i, c in enumerate(columns):
        if c.truncate and excess(need) > 0:
            need[i] = max(MIN_TEXT, need[i] - excess(need))
    for name in drop:
        if excess(need) <= 0:
            break
        keep = [i for i in keep if columns[i].header != name]
    return [(i, need[i]) for i in keep]


class Table:
    """One table of the view: the shown columns of ``columns`` and their rows as text."""

    def __init__(self, columns: Sequence[Column], rows: Sequence[Sequence[Any]]) -> None:
        shown = [(i, c) for i, c in enumerate(columns) if c.text]
        self.columns = [c for _, c in shown]
        self.cells = [[printable(format(r[i], c.spec)) for i, c in shown] for r in rows]

    def lines(self, width: int, drop: Sequence[str], limit: int) -> list[Text]:
        """The header and up to ``limit`` rows, fitted to ``width``."""
        layout = fit(self.columns, self.cells, width, drop)

        def line(values: Sequence[str]) -> str:
            parts = [_cell(values[i], w, self.columns[i].align) for i, w in layout]
            return " ".join(parts).rstrip()

        head = Text(line([c.header for c in self.columns]), style="bold", no_wrap=True, overflow="crop")
        return [head] + [Text(line(r), no_wrap=True, overflow="crop") for r in self.cells[:limit]]


class QuitKey:
    """Reads the terminal for ``q`` and turns it into a SIGINT to this process, so the
    run loop stops as on Ctrl-C: it drains, reports and prints the summary. The
    terminal goes to cbreak mode (keys arrive one at a time, not echoed; Ctrl-C still
    signals) and is restored on close. Only in the foreground: a background job that
    touched the terminal's modes would be stopped by SIGTTOU."""

    def __init__(self) -> None:
        self.fd = sys.stdin.fileno()
        self.saved = termios.tcgetattr(self.fd)
        tty.setcbreak(self.fd)
        self.wake_r, self.wake_w = os.pipe()
        self.thread = threading.Thread(target=self._watch, name="netsnoop-keys", daemon=True)
        self.thread.start()

    @staticmethod
    def wanted() -> bool:
        try:
            return sys.stdin.isatty() and os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
        except (OSError, ValueError, AttributeError):
            return False

    def _watch(self) -> None:
        while True:
            ready, _, _ = select.select([self.fd, self.wake_r], [], [])
            if self.wake_r in ready:
                return
            try:
                keys = os.read(self.fd, 64)
            except OSError:
                return
            if not keys:
                return
            if any(k in QUIT_KEYS for k in keys):
                self._quit()
                return

    def _quit(self) -> None:
        """SIGINT once the run loop has its handler (which stops cleanly): a key typed
        while netsnoop is still starting would otherwise be a KeyboardInterrupt."""
        while signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            ready, _, _ = select.select([self.wake_r], [], [], 0.01)
            if ready:
                return
        os.kill(os.getpid(), signal.SIGINT)

    def close(self) -> None:
        os.write(self.wake_w, b"x")
        self.thread.join(1)
        os.close(self.wake_r)
        os.close(self.wake_w)
        try:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)
        except termios.error:
            pass


class LiveView:
    """Redraws some head lines, tables and footer lines once per interval, in place,
    within the terminal's width and height."""

    def __init__(self, drop: Sequence[str] = (), console: Console | None = None) -> None:
        self.console = console or Console(highlight=False)
        self.drop = tuple(drop)
        # stderr stays stderr: messages and the summary must not land inside the view
        self.live = Live(console=self.console, auto_refresh=False, transient=False,
                         redirect_stdout=False, redirect_stderr=False)
        self.keys = QuitKey() if QuitKey.wanted() else None
        self.live.start()

    def show(self, head: Sequence[str], tables: Sequence[tuple[Sequence[Column], Sequence[Sequence[Any]]]],
             footer: Sequence[str] = (), empty: str = "nothing matched") -> None:
        """``head`` lines (the first in bold), the non-empty tables, ``footer``. With
        nothing in any table, the first table's header and ``empty`` instead. Rows
        beyond the terminal's height are left out and counted in a "... N more" line."""
        width, height = self.console.size
        parts: list[Text] = [Text(printable(h), style="bold" if n == 0 else "", no_wrap=True, overflow="crop")
                             for n, h in enumerate(head)]
        if head:
            parts.append(Text(""))
        built = [Table(columns, rows) for columns, rows in tables]
        filled = [t for t in built if t.cells]
        if not filled:
            parts += built[0].lines(width, self.drop, 0) + [Text(empty)]
        else:
            # what is left for rows: the height, less the head, a header and a blank
            # line per table, the footer and the "... N more" line; the live display
            # keeps its last line for the cursor
            budget = height - 1 - len(parts) - 2 * len(filled) - len(footer) - 1
            hidden = 0
            for n, t in enumerate(filled):
                limit = max(budget, 0)
                if limit == 0 and n:
                    hidden += len(t.cells)
                    continue
                if n:
                    parts.append(Text(""))
                parts += t.lines(width, self.drop, limit)
                shown = min(limit, len(t.cells))
                hidden += len(t.cells) - shown
                budget -= shown
            if hidden:
                parts.append(Text(f"... {hidden} more"))
        parts += [Text(printable(f), no_wrap=True, overflow="crop") for f in footer]
        self.live.update(Group(*parts), refresh=True)

    def close(self) -> None:
        try:
            self.live.stop()
        finally:
            if self.keys is not None:
                self.keys.close()
