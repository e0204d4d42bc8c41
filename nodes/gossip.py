"""Gossip averaging: every node averages a random vector with its neighbours (Metropolis-Hastings weights).

Each node's starting vector is drawn from (seed, rank), so every node can also compute the true average
and log its distance to it each round: consensus shows that every message arrived.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any

import networkx as nx
import numpy as np
from msgspec import Meta

from dsim.node import Node
from dsim.options import Options
from dsim.program import Program


def initial_vector(seed: int, rank: int, dim: int) -> np.ndarray:
    return np.random.default_rng([seed, rank]).standard_normal(dim)


@functools.lru_cache(maxsize=4)
def consensus_target(seed: int, nodes: int, dim: int) -> np.ndarray:
    """The true average of all starting vectors, computed once per process for all its nodes."""
    return np.mean([initial_vector(seed, r, dim) for r in range(nodes)], axis=0)


def mh_row(graph: nx.Graph, rank: int) -> dict[int, float]:
    """This node's Metropolis-Hastings weights, from its neighbours' degrees only: O(degree)."""
    row = {n: 1.0 / (1 + max(graph.degree(rank), graph.degree(n))) for n in graph.neighbors(rank)}
    row[rank] = 1.0 - sum(row.values())
    return row


class GossipOptions(Options):
    """Gossip averaging of random vectors."""

    dim: Annotated[int, Meta(ge=1, description="length of each node's vector")] = 1000
    round_timeout: Annotated[float, Meta(gt=0, description="seconds a node waits for its neighbours each round before mixing without the missing ones")] = 120.0


class Peer(Node):
    role = "peer"

    async def run(self) -> dict[str, Any]:
        dim, rounds, seed = self.options.dim, self.config.rounds, self.config.seed
        weights = mh_row(self.graph, self.rank)
        x = initial_vector(seed, self.rank, dim)
        target = consensus_target(seed, self.graph.number_of_nodes(), dim)
        start_error = float(np.linalg.norm(x - target))
        for rnd in range(rounds):
            self.progress("round", rnd, rounds)
            await self.broadcast("gossip", {"round": rnd, "x": x})
            got = await self.gather_round("gossip", rnd, timeout=self.options.round_timeout)
            mixed = (1.0 - sum(weights[n] for n in got)) * x  # a missing neighbour's weight stays here
            for nbr, payload in got.items():
                mixed = mixed + weights[nbr] * payload["x"]
            x = mixed
            self.log(round=rnd, error=float(np.linalg.norm(x - target)))
        return {"error": float(np.linalg.norm(x - target)), "start_error": start_error}


def summarize(results: dict[int, dict[str, Any]], graph: Any) -> dict[str, Any]:
    errors = [r["error"] for r in results.values() if r]
    starts = [r["start_error"] for r in results.values() if r]
    return {
        "max_error": max(errors, default=float("nan")),
        "mean_error": float(np.mean(errors)) if errors else float("nan"),
        "mean_start_error": float(np.mean(starts)) if starts else float("nan"),
    }


PROGRAM = Program(name="gossip", roles={"peer": Peer}, options=GossipOptions, summarize=summarize)
