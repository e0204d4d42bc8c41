"""Server/clients skeleton: the server broadcasts a request, every client replies, the server gathers.

It is the shape of every one-shot and round-based server program (distillation, FedAvg); on a
non-star topology the requests and replies are relayed, and the relays pay for it in bandwidth.
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from msgspec import Meta

from dsim.node import Node
from dsim.options import Options
from dsim.program import Program


class GatherOptions(Options):
    """Broadcast + gather rounds."""

    size: Annotated[int, Meta(ge=0, description="float32 values in each client's reply")] = 1000
    allow_missing: Annotated[bool, Meta(description="go on without clients that do not reply in time")] = False


class Server(Node):
    role = "server"

    async def run(self) -> dict[str, Any]:
        size, rounds = self.options.size, max(1, self.config.rounds)
        answered = 0
        for rnd in range(rounds):
            self.progress("round", rnd, rounds)
            await self.broadcast("request", {"round": rnd, "size": size}, dsts=self.clients)
            replies = await self.gather("reply", self.clients, allow_missing=self.options.allow_missing)
            for src, payload in replies.items():
                expected = np.full(size, src, dtype=np.float32)
                if payload["round"] != rnd or not np.array_equal(payload["x"], expected):
                    raise RuntimeError(f"server got a wrong reply from node {src} in round {rnd}")
            answered += len(replies)
            self.log(round=rnd, replies=len(replies))
        return {"rounds": rounds, "replies": answered, "clients": len(self.clients)}


class Client(Node):
    role = "client"

    async def run(self) -> dict[str, Any]:
        rounds = max(1, self.config.rounds)
        for rnd in range(rounds):
            self.progress("round", rnd, rounds)
            request = (await self.recv("request", src=self.server)).payload
            x = np.full(request["size"], self.rank, dtype=np.float32)
            await self.send(self.server, "reply", {"round": request["round"], "x": x})
        return {"rounds": rounds}


PROGRAM = Program(
    name="gather",
    roles={"server": Server, "client": Client},
    needs_server=True,
    options=GatherOptions,
)
