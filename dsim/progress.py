"""Live progress of every node: what a node records, what a heartbeat carries, what the launcher shows.

A node says what it is doing with one cheap call (`Node.progress("distill", 240, 400)`: 240 of 400
steps done). The nodes of a process write to one `Board` (from the event loop or an offload thread);
the worker's heartbeat thread drains it, so a beat carries only what changed since the last one,
grouped by (role, phase, total): a few bytes per node, cheap with 10,000 nodes in a process.

The coordinator keeps each node's latest state with the moment its phase began (`Tracker`), and
`summarize` turns the states into a few `Row`s: one per node when there are few, otherwise one per
role and phase with the node count, the steps' min / median / max and an ETA from the observed step
rate, so 1,000 nodes stay a handful of lines. Neither keeps a clock or a socket: tests feed them
made-up states and times. How rows are shown (a live display, plain lines) is `dsim.console`'s call.
"""

from __future__ import annotations

import statistics
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from dsim import control

PER_NODE_ROWS = 12
"""Runs with at most this many nodes get one row per node; larger ones one row per role and phase."""
MAX_ROWS = 10
"""Aggregated rows shown at most; the rest are folded into one line."""
DONE = "done"


class Board:
    """The latest (phase, step, total) of each node of this process, and what changed since the last drain.

    Without a lock, because nodes record on every step (every round of a lock-step program, cold on
    each wake-up of a busy process): a record is one dict store, atomic under the GIL, from the loop or
    an offload thread. A drain copies the dict in one call and keeps the copy; the next drain reports
    the entries that are not the very tuples it kept, so a record landing during a drain comes with the
    next one, never lost. A drain walks every node of the process: 10,000 take about a millisecond,
    twice a second."""

    def __init__(self) -> None:
        self._latest: dict[int, tuple[str, int, int]] = {}
        self._drained: dict[int, tuple[str, int, int]] = {}

    def record(self, rank: int, phase: str, step: int = 0, total: int = 0) -> None:
        self._latest[rank] = (phase, step, total)

    def drain(self, roles: Mapping[int, str]) -> list[control.Steps]:
        """What changed, grouped by (role, phase, total): the heartbeat's payload."""
        latest, drained = self._latest.copy(), self._drained
        self._drained = latest
        changed = {rank: state for rank, state in latest.items() if drained.get(rank) is not state}
        groups: dict[tuple[str, str, int], control.Steps] = {}
        for rank, (phase, step, total) in changed.items():
            role = roles.get(rank, "node")
            group = groups.get((role, phase, total))
            if group is None:
                group = groups[role, phase, total] = control.Steps(role, phase, total, [], [])
            group.ranks.append(rank)
            group.steps.append(step)
        return list(groups.values())


BOARD = Board()
"""This process's board: every node of a worker records here, its heartbeat thread drains it."""


@dataclass
class NodeState:
    """A node's latest progress, and where its current phase started (for the step rate)."""

    role: str
    phase: str
    step: int
    total: int
    since: float  # when this phase was first seen
    first: int  # its step then
    at: float  # when `step` was seen

    def eta(self, now: float) -> float | None:
        """Seconds until the phase's last step at the rate observed since it began (None: no rate yet)."""
        if self.total <= 0:
            return None
        if self.step >= self.total:
            return 0.0
        if self.step <= self.first or self.at <= self.since:
            return None
        rate = (self.step - self.first) / (self.at - self.since)
        return max(0.0, (self.total - self.step) / rate - (now - self.at))


@dataclass
class Tracker:
    """Every node's latest progress as heartbeats bring it (the coordinator's side of the board)."""

    nodes: dict[int, NodeState] = field(default_factory=dict)

    def update(self, groups: Iterable[control.Steps], now: float) -> None:
        for g in groups:
            for rank, step in zip(g.ranks, g.steps, strict=False):
                old = self.nodes.get(rank)
                if old is not None and old.phase == g.phase and old.total == g.total and step >= old.step:
                    old.step, old.at = step, now
                else:
                    self.nodes[rank] = NodeState(g.role, g.phase, step, g.total, now, step, now)


@dataclass(frozen=True)
class Row:
    """One line of the live display: one node, or the nodes of one role in one phase."""

    who: str  # "node 3 client", or "client"
    phase: str  # what the program said ("distill", "round", ...), "done", or "" (nothing reported yet)
    nodes: int
    steps: tuple[int, int, int] | None  # min, median, max steps done; None: a phase without steps
    total: int  # the phase's steps (the largest among its nodes)
    eta: float | None  # seconds until the last of these nodes ends the phase

    @property
    def fraction(self) -> float | None:
        """How far the median node is, for a bar; None for a phase without steps."""
        return None if self.steps is None or self.total <= 0 else min(1.0, self.steps[1] / self.total)

    def cells(self) -> tuple[str, str, str, str]:
        """(who, phase, nodes, steps): the words of the row; the ETA is the caller's to format."""
        phase = self.phase or "no progress yet"
        nodes = "" if self.who.startswith("node ") else f"{self.nodes} node{'s' if self.nodes != 1 else ''}"
        if self.steps is None:
            return self.who, phase, nodes, ""
        low, mid, high = self.steps
        steps = f"{mid}/{self.total}" if low == high else f"median {mid}/{self.total}, min {low}, max {high}"
        return self.who, phase, nodes, steps


@dataclass(frozen=True)
class View:
    """What the launcher shows at one moment: a headline (time, nodes done, bytes sent) and the rows."""

    headline: str
    rows: list[Row] = field(default_factory=list)


def summarize(nodes: Mapping[int, NodeState], done: Collection[int], world: Collection[int], now: float,
              per_node: int = PER_NODE_ROWS, max_rows: int = MAX_ROWS) -> list[Row]:
    """The rows of the live display: one per node of a small run, else one per (role, phase) in the
    order roles and phases appear, finished nodes last, at most `max_rows` (the rest folded into one)."""
    if len(world) <= per_node:
        return [_node_row(rank, nodes.get(rank), rank in done, now) for rank in sorted(world)]
    groups: dict[tuple[str, str], list[NodeState]] = {}
    finished: dict[str, int] = {}
    silent = 0
    for rank in sorted(world):
        state = nodes.get(rank)
        if rank in done:
            role = state.role if state is not None else "node"
            finished[role] = finished.get(role, 0) + 1
        elif state is None:
            silent += 1
        else:
            groups.setdefault((state.role, state.phase), []).append(state)
    rows = [_group_row(role, phase, states, now) for (role, phase), states in groups.items()]
    rows += [Row(role, DONE, n, None, 0, None) for role, n in finished.items()]
    if silent:
        rows.append(Row("(waiting)", "", silent, None, 0, None))
    if len(rows) > max_rows:
        rest = rows[max_rows - 1:]
        rows = rows[: max_rows - 1] + [Row("...", f"{len(rest)} more phases", sum(r.nodes for r in rest),
                                           None, 0, None)]
    return rows


def _node_row(rank: int, state: NodeState | None, done: bool, now: float) -> Row:
    role = f" {state.role}" if state is not None else ""
    if done:
        return Row(f"node {rank}{role}", DONE, 1, None, 0, None)
    if state is None:
        return Row(f"node {rank}", "", 1, None, 0, None)
    steps = (state.step,) * 3 if state.total > 0 else None
    return Row(f"node {rank}{role}", state.phase, 1, steps, state.total, state.eta(now))


def _group_row(role: str, phase: str, states: list[NodeState], now: float) -> Row:
    total = max(s.total for s in states)
    etas = [e for s in states if (e := s.eta(now)) is not None]
    if total <= 0:
        return Row(role, phase, len(states), None, 0, None)
    steps = [s.step for s in states]
    median = int(statistics.median_low(steps))
    return Row(role, phase, len(states), (min(steps), median, max(steps)), total, max(etas) if etas else None)
