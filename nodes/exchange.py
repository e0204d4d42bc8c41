"""Lock-step neighbour exchange: a transport benchmark with no computation in the way.

Every round each node sends one float32 array of `exchange.bytes` bytes to every neighbour, then waits
for one from each neighbour. The per-pair FIFO order of the links keeps the rounds matched, so the only
work measured is the runtime's: encoding, sockets, decoding and mailbox delivery.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Annotated, Any

import networkx as nx
import numpy as np
from msgspec import Meta

from dsim.node import Node
from dsim.options import Options
from dsim.program import Program

KIND = "exchange"


class ExchangeOptions(Options):
    """Lock-step neighbour exchange."""

    bytes: Annotated[int, Meta(ge=4, multiple_of=4, description="bytes of the float32 array sent to every neighbour each round")] = 1024


class Peer(Node):
    role = "peer"

    async def run(self) -> dict[str, Any]:
        nbytes, rounds = self.options.bytes, self.config.rounds
        x = np.zeros(nbytes // 4, dtype=np.float32)  # one array, never written: safe to resend every round
        received = 0
        start, cpu_start = time.perf_counter(), time.process_time()
        for rnd in range(rounds):
            self.progress("round", rnd, rounds)
            for nbr in self.neighbours:
                await self.send(nbr, KIND, x)
            for nbr in self.neighbours:
                payload = (await self.recv(KIND, src=nbr)).payload
                if payload.nbytes != nbytes:
                    raise RuntimeError(f"node {self.rank} got {payload.nbytes} bytes from {nbr}, not {nbytes}")
                received += 1
        seconds = time.perf_counter() - start
        # CPU of the whole worker process (all its nodes and threads) over the same span.
        cpu = time.process_time() - cpu_start
        return {"msgs": received, "bytes": received * nbytes, "seconds": seconds, "process_cpu_s": cpu}


def summarize(results: Mapping[int, dict[str, Any]], graph: nx.Graph) -> dict[str, Any]:
    """Aggregate throughput: every message received, over the time of the slowest node (MB = 1e6 bytes)."""
    done = [r for r in results.values() if r]
    msgs = sum(r["msgs"] for r in done)
    nbytes = sum(r["bytes"] for r in done)
    slowest = max((r["seconds"] for r in done), default=0.0)
    return {
        "msgs": msgs,
        "bytes": nbytes,
        "seconds": slowest,
        "msgs_per_s": msgs / slowest if slowest > 0 else float("nan"),
        "mb_per_s": nbytes / 1e6 / slowest if slowest > 0 else float("nan"),
    }


PROGRAM = Program(name="exchange", roles={"peer": Peer}, options=ExchangeOptions, summarize=summarize)
