"""The per-node message logs (nodes/<rank>.messages.csv: t,event,src,dst,kind,bytes) as arrays.

`t` is seconds since launch (the clock of the jsonl events); `src`/`dst` are a message's original
sender and final receiver, so a relayed message is one sender-to-receiver delivery here.
"""

from __future__ import annotations

import csv
from collections import defaultdict, deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

EVENTS = ("sent", "recv", "relayed", "lost", "dropped")
HEADER = ["t", "event", "src", "dst", "kind", "bytes"]


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


def read_messages(folder: Path) -> MessageLog | None:
    """nodes/*.messages.csv of a run, or None when the run has no message log. Rows that do not parse
    (a file cut short by a killed process) are skipped."""
    files = sorted(folder.glob("*.messages.csv")) if folder.is_dir() else []
    if not files:
        return None
    kinds: dict[str, int] = {}
    cols: dict[str, list] = {k: [] for k in ("t", "event", "src", "dst", "kind", "bytes", "node")}
    codes = {name: i for i, name in enumerate(EVENTS)}
    for file in files:
        stem = file.name.split(".")[0]
        node = int(stem) if stem.isdigit() else -1
        with open(file, newline="") as fh:
            for row in csv.DictReader(fh):
                try:
                    t, ev = float(row["t"]), codes[row["event"]]
                    src, dst, nb = int(row["src"]), int(row["dst"]), int(row["bytes"])
                except (KeyError, TypeError, ValueError):
                    continue
                cols["t"].append(t)
                cols["event"].append(ev)
                cols["src"].append(src)
                cols["dst"].append(dst)
                cols["kind"].append(kinds.setdefault(row.get("kind") or "?", len(kinds)))
                cols["bytes"].append(nb)
                cols["node"].append(node)
    order = np.argsort(np.asarray(cols["t"], dtype=float), kind="stable")
    arr = {k: np.asarray(v, dtype=float if k == "t" else np.int64)[order] for k, v in cols.items()}
    names = sorted(kinds, key=kinds.get)
    return MessageLog(t=arr["t"], event=arr["event"], src=arr["src"], dst=arr["dst"], kind=arr["kind"],
                      nbytes=arr["bytes"], node=arr["node"], kinds=names)


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


def sender_bins(log: MessageLog, ranks: int, bins: int, t_end: float) -> tuple[np.ndarray, np.ndarray]:
    """Bytes sent per original sender per time bin (ranks x bins) and the bin edges, for runs too big
    to draw message by message."""
    mask = log.select("sent")
    edges = np.linspace(0.0, max(t_end, float(log.t.max()) if len(log) else 0.0, 1e-9), bins + 1)
    grid, _, _ = np.histogram2d(log.src[mask], log.t[mask], bins=[np.arange(ranks + 1) - 0.5, edges],
                                weights=log.nbytes[mask])
    return grid, edges


def traffic_matrix(log: MessageLog, ranks: int) -> np.ndarray:
    """Bytes from each original sender to each final receiver (ranks x ranks)."""
    mask = log.select("sent")
    matrix = np.zeros((ranks, ranks))
    np.add.at(matrix, (np.clip(log.src[mask], 0, ranks - 1), np.clip(log.dst[mask], 0, ranks - 1)),
              log.nbytes[mask])
    return matrix
