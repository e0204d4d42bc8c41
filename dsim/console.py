"""What the launcher shows while a run goes: a live display on a terminal, plain lines otherwise.

On an interactive terminal the progress of the run (`dsim.progress.View`: a headline and one row per
node or per role and phase) is a live display drawn by rich, redrawn in place at every heartbeat;
lines said while it runs print above it. Anywhere else (a pipe, a CI log) the same rows are printed
as plain lines, at most every `every` seconds. Under --quiet nothing is shown but failures. This is
the one place that decides how things are shown; the rest of dsim hands it text and views.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from dsim.progress import Row, View

PLAIN_EVERY = 10.0
"""Seconds between two plain progress blocks (pipes, CI logs): often enough to follow, rare enough to read."""


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def fmt_seconds(s: float) -> str:
    """A duration as a person reads it: 0.42 s, 12 s, 3 min 05 s, 2 h 07 min."""
    if s < 10:
        return f"{s:.2g} s" if s < 1 else f"{s:.1f} s"
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def _eta(row: Row) -> str:
    return "" if row.eta is None or row.phase == "done" else f"ETA {fmt_seconds(row.eta)}"


def plain_lines(view: View) -> list[str]:
    """The view as aligned plain lines: the headline, then one indented line per row."""
    cells = [(*row.cells(), _eta(row)) for row in view.rows]
    widths = [max((len(c[i]) for c in cells), default=0) for i in range(5)]
    lines = [view.headline]
    for c in cells:
        lines.append("  " + "  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True) if w).rstrip())
    return lines


class Console:
    def __init__(self, quiet: bool = False, stream: TextIO | None = None, every: float = PLAIN_EVERY) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.every = every
        self._rich: Any = None  # a rich Console on an interactive terminal, else None (plain lines)
        if not quiet and self.stream.isatty():
            from rich.console import Console as RichConsole

            rich = RichConsole(file=self.stream, highlight=False)
            self._rich = rich if rich.is_interactive else None
        self._live: Any = None
        self._last_plain = -float("inf")

    def status(self, view: Callable[[], View]) -> None:
        """Show the run's progress: redraw the live display on a terminal; elsewhere print it as plain
        lines at most every `every` seconds. `view` builds it, and is called only when it is shown."""
        if self.quiet:
            return
        if self._rich is not None:
            if self._live is None:
                from rich.live import Live

                self._live = Live(console=self._rich, auto_refresh=False, transient=True)
                self._live.start()
            self._live.update(_render(view()), refresh=True)
        elif time.monotonic() - self._last_plain >= self.every:
            self._last_plain = time.monotonic()
            self.stream.write("\n".join(plain_lines(view())) + "\n")
            self.stream.flush()

    def clear(self) -> None:
        """End the live display (it leaves nothing behind), so that what follows prints cleanly."""
        if self._live is not None:
            self._live.stop()
            self._live = None

    def error(self, text: str) -> None:
        """A failure line: shown even under --quiet, where it is the only thing shown."""
        self._write(text)

    def say(self, text: str) -> None:
        if not self.quiet:
            self._write(text)

    def _write(self, text: str) -> None:
        if self._live is not None:  # above the live display, which is redrawn below it
            self._rich.print(text, markup=False, highlight=False, soft_wrap=True)
            return
        self.stream.write(text + "\n")
        self.stream.flush()


def _render(view: View) -> Any:
    """The live display: the headline, then a grid of rows with a bar for the phases that have steps."""
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    grid = Table.grid(padding=(0, 2))
    for _ in range(6):
        grid.add_column(no_wrap=True)
    for row in view.rows:
        who, phase, nodes, steps = row.cells()
        fraction = row.fraction
        bar = ProgressBar(total=1.0, completed=fraction, width=20) if fraction is not None else Text("")
        style = "green" if row.phase == "done" else "dim" if not row.phase else ""
        grid.add_row(Text(who, style="bold"), Text(phase, style=style), nodes, bar, steps, _eta(row))
    return Group(Text(view.headline), grid)
