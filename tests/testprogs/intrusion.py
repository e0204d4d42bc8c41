"""Node 0 names its run (a test hook: the run id an outsider is assumed to know), then waits until it
has dropped a number of connections or frames before every node finishes.

Proves that an outsider without the run key gets nothing through while the run goes on.
"""

from __future__ import annotations

from typing import Annotated, Any

from msgspec import Meta

from dsim.node import Node
from dsim.options import Options
from dsim.program import Program
from testprogs.drops import until_dropped


class IntrusionOptions(Options):
    """How many drops node 0 waits for before the run ends."""

    drops: Annotated[int, Meta(ge=0, description="drops node 0 must count first")] = 2


class Peer(Node):
    role = "peer"

    async def run(self) -> dict[str, Any]:
        endpoint = self._ctx.endpoint
        if self.rank == 0:
            self.log_event("target", run=endpoint.run, address=endpoint.address)
            await until_dropped(self, self.options.drops)
            await self.broadcast("done")
        else:
            await self.recv("done", src=0)
        return {"dropped": endpoint.counters.msgs_dropped,
                "kinds": sorted(endpoint.counters.by_kind)}


PROGRAM = Program(name="intrusion", roles={"peer": Peer}, options=IntrusionOptions)
