"""Node 0 waits until it has dropped a number of bad frames (sent by the test), then all nodes gossip.

Proves that garbage on a node's port is dropped and logged while the node keeps messaging.
"""

from __future__ import annotations

from typing import Annotated, Any

from msgspec import Meta

from dsim.node import Node
from dsim.options import Options
from dsim.program import Program
from testprogs.drops import until_dropped


class ResilientOptions(Options):
    """How many bad frames node 0 waits to have dropped before the gossip starts."""

    drops: Annotated[int, Meta(ge=0, description="bad frames node 0 must drop first")] = 3


class Peer(Node):
    role = "peer"

    async def run(self) -> dict[str, Any]:
        if self.rank == 0:
            dropped = await until_dropped(self, self.options.drops)
            self.log_event("drops_seen", dropped=dropped)
        for rnd in range(3):
            await self.broadcast("ping", {"round": rnd})
            await self.gather("ping")
        return {"ok": True}


PROGRAM = Program(name="resilient", roles={"peer": Peer}, options=ResilientOptions)
