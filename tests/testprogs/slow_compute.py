"""Each node offloads one 0.2 s computation and reports how long it took as seen by the node."""

from __future__ import annotations

import time

from dsim.node import Node
from dsim.program import Program


class Peer(Node):
    async def run(self):
        start = time.perf_counter()
        await self.offload(time.sleep, 0.2)
        return {"seconds": time.perf_counter() - start}


PROGRAM = Program(name="slow_compute", roles={"peer": Peer})
