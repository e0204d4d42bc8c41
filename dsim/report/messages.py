"""The run's message log (messages/<process>.csv: t,node,event,src,dst,kind,bytes) as arrays.

`t` is seconds since launch (the clock of the jsonl events); `node` is the node that logged the row;
`src`/`dst` are a message's original sender and final receiver (-1 where a dropped frame did not
say), so a relayed message is one sender-to-receiver delivery here.
"""

from __future__ import annotations

import csv
from collections import defaultdict, deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

EVENTS = ("sent", "recv", "relayed", "lost", "dropped")
MAX_CELLS = 200  # rank groups per axis of a drawn matrix: 20,000 nodes must not make a 20,000^2 array


@dataclass
class MessageLog:
    """Every node's message events, one row each, sorted by time; `kind` indexes `kinds`."""

    t: np.ndarray
    event: np.ndarray
    src: np.ndarray
    dst: np.ndarray
    kind: np.ndarray
    nbytes: np.ndarray
    node: np.ndarray
    kinds: list[str]

    def __len__(self) -> int:
        return len(self.t)

    def select(self, event: str) -> np.ndarray:
        """Row mask of one event type."""
        return self.event == EVENTS.index(event)

    def cumulative_sent(self) -> tuple[np.ndarray, np.ndarray]:
        """(t, bytes sent by all nodes up to t): the x axis of metrics against bytes."""
        mask = self.select("sent")
        return self.t[mask], np.cumsum(self.nbytes[mask])


@dataclass
class Deliveries:
    """Sent messages matched to their arrival (NaN: lost, dropped or still in flight at the end)."""

    t_sent: np.ndarray
    t_recv: np.ndarray
    src: np.ndarray
    dst: np.ndarray
    kind: np.ndarray
    nbytes: np.ndarray


def read_messages(run_dir: Path) -> MessageLog | None:
    """messages/*.csv of a run, or None when the run has no message log (older runs, or
    `net.message_log=false`). Rows that do not parse (a file cut short by a killed process) are skipped."""
    folder = run_dir / "messages"
    files = sorted(folder.glob("*.csv")) if folder.is_dir() else []
    if not files:
        return None
    kinds: dict[str, int] = {}
    codes = {name: i for i, name in enumerate(EVENTS)}
    cols: list[list] = [[] for _ in range(7)]  # t, node, event, src, dst, kind, bytes
    for file in files:
        with open(file, newline="", encoding="utf-8", errors="replace") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                continue
            at = {name: header.index(name) for name in ("t", "node", "event", "src", "dst", "kind", "bytes")
                  if name in header}
            if len(at) < 7:
                continue
            for row in reader:
                try:
                    values = (float(row[at["t"]]), int(row[at["node"]]), codes[row[at["event"]]],
                              int(row[at["src"]]), int(row[at["dst"]]),
                              kinds.setdefault(row[at["kind"]], len(kinds)), int(row[at["bytes"]]))
                except (IndexError, KeyError, ValueError):
                    continue
                for col, value in zip(cols, values, strict=True):
                    col.append(value)
    t = np.asarray(cols[0], dtype=float)
    order = np.argsort(t, kind="stable")
    node, event, src, dst, kind, nbytes = (np.asarray(c, dtype=np.int64)[order] for c in cols[1:])
    return MessageLog(t=t[order], event=event, src=src, dst=dst, kind=kind, nbytes=nbytes, node=node,
                      kinds=sorted(kinds, key=kinds.get))


def deliveries(log: MessageLog) -> Deliveries:
    """Each `sent` row paired with its `recv` row at the receiver: links are FIFO, so the n-th arrival
    from src to dst of a kind is the n-th such send still in flight. Losses and drops are taken out
    first (the earliest send of the same message before them), so they do not shift the pairing."""
    sends: dict[tuple[int, int, int, int], deque[int]] = defaultdict(deque)
    sent_idx = np.flatnonzero(log.select("sent"))
    t_recv = np.full(len(sent_idx), np.nan)
    position = {int(i): n for n, i in enumerate(sent_idx)}
    gone = {EVENTS.index("lost"), EVENTS.index("dropped")}
    recv = EVENTS.index("recv")
    sent_code = EVENTS.index("sent")
    for i in range(len(log)):
        ev = int(log.event[i])
        key = (int(log.src[i]), int(log.dst[i]), int(log.kind[i]), int(log.nbytes[i]))
        if ev == sent_code:
            sends[key].append(i)
        elif ev == recv and sends[key]:
            t_recv[position[sends[key].popleft()]] = log.t[i]
        elif ev in gone and sends[key]:
            sends[key].popleft()
    return Deliveries(t_sent=log.t[sent_idx], t_recv=t_recv, src=log.src[sent_idx], dst=log.dst[sent_idx],
                      kind=log.kind[sent_idx], nbytes=log.nbytes[sent_idx])


def rank_groups(ranks: int) -> int:
    """Ranks per drawn row/column so that no axis has more than MAX_CELLS cells."""
    return max(1, -(-ranks // MAX_CELLS))


def sender_bins(log: MessageLog, ranks: int, bins: int, t_end: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Bytes sent per original sender (grouped by `rank_groups`) per time bin, the bin edges and the
    group size: runs too big to draw message by message."""
    mask = log.select("sent") & (log.src >= 0)
    group = rank_groups(ranks)
    rows = -(-ranks // group)
    edges = np.linspace(0.0, max(t_end, float(log.t.max()) if len(log) else 0.0, 1e-9), bins + 1)
    grid, _, _ = np.histogram2d(log.src[mask] // group, log.t[mask], bins=[np.arange(rows + 1) - 0.5, edges],
                                weights=log.nbytes[mask])
    return grid, edges, group


def traffic_matrix(log: MessageLog, ranks: int) -> tuple[np.ndarray, int]:
    """Bytes from each original sender to each final receiver, ranks grouped by `rank_groups`, and
    the group size."""
    mask = log.select("sent") & (log.src >= 0) & (log.dst >= 0)
    group = rank_groups(ranks)
    cells = -(-ranks // group)
    matrix = np.zeros((cells, cells))
    np.add.at(matrix, (np.minimum(log.src[mask] // group, cells - 1), np.minimum(log.dst[mask] // group, cells - 1)),
              log.nbytes[mask])
    return matrix, group
