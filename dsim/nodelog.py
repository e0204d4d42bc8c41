"""Per-node event logs, ``nodes/<rank>.jsonl``, and the per-process message log, ``messages/<process>.csv``.

Event lines are written as they happen, so a run that fails keeps everything its nodes logged up to
then. The message log has one row per message a node sent, received, relayed, lost or dropped (who
sent what to whom, when): many rows per second, so it is buffered per process and flushed at least
every second and when the process closes it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from itertools import chain
from pathlib import Path
from typing import Any


def json_safe(value: Any) -> Any:
    """JSON-safe scalars: numpy/torch scalars become Python numbers, NaN becomes null."""
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


class NodeLog:
    """Appends to `path`, whose folder must exist (a worker makes it once for all its nodes)."""

    def __init__(self, path: Path, rank: int, t0: float) -> None:
        self.rank, self.t0 = rank, t0
        # Unbuffered: each line is one write, so nothing is lost on failure, and an idle node holds no
        # buffer (a line-buffered text file keeps 8 KiB per node: 160 MiB at 20,000 nodes).
        self._fh = open(path, "ab", buffering=0)

    def write(self, event: str, **fields: Any) -> None:
        if self._fh.closed:
            return
        record = {"t": round(time.time() - self.t0, 4), "rank": self.rank, "event": event}
        record.update({k: json_safe(v) for k, v in fields.items()})
        self._fh.write((json.dumps(record, default=str) + "\n").encode())

    def close(self) -> None:
        self._fh.close()


MESSAGE_COLUMNS = ("t", "node", "event", "src", "dst", "kind", "bytes")
MESSAGE_EVENTS = ("sent", "recv", "relayed", "lost", "dropped")
_FLUSH_EVERY_S = 1.0
_ROW = "%.6f,%d,%s,%d,%d,%s,%d\n"  # MESSAGE_COLUMNS


class MessageLog:
    """One process's message log: CSV rows `t,node,event,src,dst,kind,bytes`.

    `t` is seconds since the launch (the event logs' clock); `node` is the node that logged the row;
    `src` and `dst` are the message's original sender and final receiver (-1 where a dropped frame
    did not say); `bytes` its frames' size as counted in bandwidth.csv.

    A row is recorded as a tuple and formatted with the others of its second when they are written:
    formatting and writing each row as it came cost about a fifth of the small-message rate when node
    processes outnumber cores (every wake-up ran that code cold); a second's rows at once run it warm."""

    def __init__(self, path: Path, t0: float) -> None:
        self.t0 = t0
        new = not path.exists()
        self._fh = open(path, "a", newline="", encoding="utf-8")
        if new:
            self._fh.write(",".join(MESSAGE_COLUMNS) + "\n")
        self._rows: list[tuple[float, int, str, int, int, str, int]] = []  # t is since t0 already
        self._add = self._rows.append  # the hot path: one bound call per row
        self._next_flush = time.time() - t0 + _FLUSH_EVERY_S
        self._kinds: dict[str, str] = {}  # each kind as it is written (CSV-quoted when it must be)

    def record(self, node: int, event: str, src: int, dst: int, kind: str, nbytes: int) -> None:
        t = time.time() - self.t0
        self._add((t, node, event, src, dst, kind, nbytes))
        if t >= self._next_flush:
            self._next_flush = t + _FLUSH_EVERY_S
            self.flush()

    def flush(self) -> None:
        """Write the rows recorded since the last flush: all of them through one %-format, which costs
        a third less a row than formatting each (a row's CPU is paid twice per message)."""
        rows = self._rows
        if not rows or self._fh.closed:
            return
        kinds = self._kinds
        for kind in {row[5] for row in rows} - kinds.keys():
            kinds[kind] = _csv_cell(kind)
        if any(cell != kind for kind, cell in kinds.items()):  # a kind that needs quoting: rare
            rows = [(*row[:5], kinds[row[5]], row[6]) for row in rows]
        self._fh.write((_ROW * len(rows)) % tuple(chain.from_iterable(rows)))
        self._fh.flush()
        self._rows.clear()

    def close(self) -> None:
        if not self._fh.closed:
            self.flush()
            self._fh.close()


def _csv_cell(text: str) -> str:
    """A program's kind as one CSV cell: as it is, or quoted when it holds a comma, quote or newline."""
    if not any(c in text for c in ',"\r\n'):
        return text
    out = io.StringIO()
    csv.writer(out).writerow([text])
    return out.getvalue().rstrip("\r\n")
