"""What the launcher shows while a run goes: one status line on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


class Console:
    def __init__(self, quiet: bool = False, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.tty = self.stream.isatty()
        self._shown = False
        self._last_plain = 0.0

    def status(self, text: str) -> None:
        """Overwrite the status line on a terminal; elsewhere print it at most every 10 s."""
        if self.quiet:
            return
        if self.tty:
            self.stream.write("\r\033[K" + text)
            self.stream.flush()
            self._shown = True
        elif time.monotonic() - self._last_plain >= 10:
            self._last_plain = time.monotonic()
            self.stream.write(text + "\n")
            self.stream.flush()

    def clear(self) -> None:
        if self._shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._shown = False

    def error(self, text: str) -> None:
        """A failure line: shown even under --quiet, where it is the only thing shown."""
        self.clear()
        self.stream.write(text + "\n")
        self.stream.flush()

    def say(self, text: str) -> None:
        if not self.quiet:
            self.clear()
            self.stream.write(text + "\n")
            self.stream.flush()
