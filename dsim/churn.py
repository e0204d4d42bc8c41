"""Churn and stragglers: when each node is offline, and how much slower each node computes.

Every node derives the same schedule from the config and the run seed (or reads the same trace file),
so no message is needed to agree on it. Times are seconds since the run's start barrier. An offline
node neither sends nor receives: the transport drops both ways and counts the messages as lost
(`Endpoint.availability`). A straggler's `offload`ed computations take `factor` times as long (the
runtime waits out the difference), so compute time and its effect on rounds and deadlines are real.
"""

from __future__ import annotations

import csv
from bisect import bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
from msgspec import Meta

from dsim.errors import DsimError
from dsim.options import Options


class ChurnOptions(Options):
    """Nodes that go offline and come back: a seeded rate, or a trace file."""

    offline_fraction: Annotated[float, Meta(ge=0, lt=1, description="long-run share of time each churning node is offline; 0 = no churn")] = 0.0
    mean_offline: Annotated[float, Meta(gt=0, description="mean length of an offline period, seconds (exponential)")] = 10.0
    roles: Annotated[tuple[str, ...], Meta(description="roles that churn (a server does not unless listed)")] = ("client", "peer")
    trace: Annotated[str, Meta(description="CSV file rank,start,end (seconds since the start) of offline periods; replaces the rate")] = ""
    horizon: Annotated[float, Meta(gt=0, description="seconds of schedule drawn (a node is online after it)")] = 86400.0

    @property
    def enabled(self) -> bool:
        return self.offline_fraction > 0 or bool(self.trace)


class StragglerOptions(Options):
    """Nodes that compute slower than the others."""

    fraction: Annotated[float, Meta(ge=0, le=1, description="share of the nodes (drawn with the seed) that are slowed")] = 0.0
    slowdown: Annotated[float, Meta(ge=1, description="compute slowdown factor of the drawn nodes")] = 1.0
    factors: Annotated[dict[str, Annotated[float, Meta(ge=1)]], Meta(description="per-node slowdown factors by rank, e.g. {\"3\" = 4.0}; override the draw")] = {}


@dataclass(frozen=True)
class Schedule:
    """One node's offline periods as sorted, disjoint (start, end) pairs in seconds since the start."""

    periods: tuple[tuple[float, float], ...] = ()

    def offline_at(self, t: float) -> bool:
        """Whether the node is offline `t` seconds after the start (O(log periods))."""
        i = bisect_right(self.periods, (t, float("inf"))) - 1
        return i >= 0 and t < self.periods[i][1]


def draw_schedule(opts: ChurnOptions, seed: int, rank: int) -> Schedule:
    """Alternating exponential up and down times with the configured offline share and mean length;
    the first period starts online, at a random phase."""
    f = opts.offline_fraction
    if f <= 0:
        return Schedule()
    mean_down = opts.mean_offline
    mean_up = mean_down * (1 - f) / f
    rng = np.random.default_rng([seed, rank, 0xC4])
    t, periods = rng.exponential(mean_up), []
    while t < opts.horizon:
        down = rng.exponential(mean_down)
        periods.append((float(t), float(min(t + down, opts.horizon))))
        t += down + rng.exponential(mean_up)
    return Schedule(tuple(periods))


def read_trace(path: str, ranks: Iterable[int]) -> dict[int, Schedule]:
    """Offline periods per rank from a CSV file with a header rank,start,end; bad rows are one-line errors."""
    known = set(ranks)
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise DsimError(f"churn.trace {path}: {exc.strerror}") from None
    periods: dict[int, list[tuple[float, float]]] = {}
    for line, row in enumerate(rows, 2):
        try:
            rank, start, end = int(row["rank"]), float(row["start"]), float(row["end"])
        except (KeyError, TypeError, ValueError):
            raise DsimError(f"churn.trace {path} line {line}: expected numbers under rank,start,end") from None
        if rank not in known:
            raise DsimError(f"churn.trace {path} line {line}: rank {rank} is not a node of this graph")
        if not 0 <= start < end:
            raise DsimError(f"churn.trace {path} line {line}: need 0 <= start < end, got {start} and {end}")
        periods.setdefault(rank, []).append((start, end))
    out = {}
    for rank, spans in periods.items():
        spans.sort()
        if any(a[1] > b[0] for a, b in zip(spans, spans[1:], strict=False)):
            raise DsimError(f"churn.trace {path}: offline periods of rank {rank} overlap")
        out[rank] = Schedule(tuple(spans))
    return out


def schedules(opts: ChurnOptions, seed: int, roles: Mapping[int, str]) -> dict[int, Schedule]:
    """Every node's schedule (nodes of roles that do not churn: always online)."""
    if opts.trace:
        return read_trace(str(Path(opts.trace)), roles)
    return {r: draw_schedule(opts, seed, r) if role in opts.roles else Schedule() for r, role in roles.items()}


def slowdowns(opts: StragglerOptions, seed: int, ranks: Iterable[int]) -> dict[int, float]:
    """Each node's compute slowdown factor: a seeded draw of `fraction` of the nodes, then `factors`."""
    ranks = sorted(ranks)
    bad = [k for k in opts.factors if not k.isdigit() or int(k) not in set(ranks)]
    if bad:
        raise DsimError(f"stragglers.factors names {bad[0]!r}, which is not a rank of this graph")
    out = dict.fromkeys(ranks, 1.0)
    if opts.fraction > 0 and opts.slowdown > 1:
        rng = np.random.default_rng([seed, 0x57A6])
        count = round(opts.fraction * len(ranks))
        for r in rng.choice(ranks, size=count, replace=False):
            out[int(r)] = float(opts.slowdown)
    out.update({int(k): v for k, v in opts.factors.items()})
    return out


@dataclass(frozen=True)
class Conditions:
    """What churn and stragglers mean for each node of a run: decided once, before anything starts."""

    schedules: Mapping[int, Schedule]
    slowdowns: Mapping[int, float]

    def schedule(self, rank: int) -> Schedule:
        return self.schedules.get(rank, Schedule())

    def slowdown(self, rank: int) -> float:
        return self.slowdowns.get(rank, 1.0)


def conditions(churn: ChurnOptions, stragglers: StragglerOptions, seed: int,
               roles: Mapping[int, str]) -> Conditions | None:
    """Every node's schedule and slowdown; None when neither churn nor stragglers are configured."""
    slow = slowdowns(stragglers, seed, roles)
    if not churn.enabled and all(v == 1.0 for v in slow.values()):
        return None
    return Conditions(schedules(churn, seed, roles) if churn.enabled else {}, slow)
