"""Node 0 waits until it has dropped a number of bad frames (sent by the test), then all nodes gossip.

Proves that garbage on a node's port is dropped and logged while the node keeps messaging.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from msgspec import Meta

from dsim.node import Node
from dsim.options import Options
from dsim.program import Program


class ResilientOptions(Options):
    """How many bad frames node 0 waits to have dropped before the gossip starts."""

    drops: Annotated[int, Meta(ge=0, description="bad frames node 0 must drop first")] = 3


class Peer(Node):
    role = "peer"

    async def run(self) -> dict[str, Any]:
        if self.rank == 0:
            counters = self._ctx.endpoint.counters
            deadline = asyncio.get_running_loop().time() + self.timeout
            while counters.msgs_dropped < self.options.drops:
                if asyncio.get_running_loop().time() > deadline:
                    raise TimeoutError(f"only {counters.msgs_dropped} frames dropped")
                await asyncio.sleep(0.02)  # polling a counter the test drives from outside
            self.log_event("drops_seen", dropped=counters.msgs_dropped)
        for rnd in range(3):
            await self.broadcast("ping", {"round": rnd})
            await self.gather("ping")
        return {"ok": True}


PROGRAM = Program(name="resilient", roles={"peer": Peer}, options=ResilientOptions)
