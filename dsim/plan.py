"""Which worker process hosts which ranks: the same deterministic plan on every machine."""

from __future__ import annotations

import multiprocessing.process
from dataclasses import dataclass

from dsim.hosts import Machine


@dataclass(frozen=True)
class WorkerPlan:
    name: str
    machine: int
    ranks: list[int]


@dataclass
class LocalProc:
    name: str
    ranks: list[int]
    process: multiprocessing.process.BaseProcess


def plan_workers(machines: list[Machine], nodes_per_process: int) -> list[WorkerPlan]:
    plans = []
    for m in machines:
        ranks = list(m.ranks)
        for i in range(0, len(ranks), nodes_per_process):
            plans.append(WorkerPlan(f"w{m.index}.{i // nodes_per_process}", m.index,
                                    ranks[i:i + nodes_per_process]))
    return plans


def format_ranks(ranks: list[int]) -> str:
    """'node 3' or 'nodes 3-5, 9': how failures name the nodes involved."""
    ranks = sorted(ranks)
    if len(ranks) == 1:
        return f"node {ranks[0]}"
    spans, start = [], None
    for i, r in enumerate(ranks):
        if start is None:
            start = r
        if i + 1 == len(ranks) or ranks[i + 1] != r + 1:
            spans.append(f"{start}" if start == r else f"{start}-{r}")
            start = None
    return "nodes " + ", ".join(spans)
