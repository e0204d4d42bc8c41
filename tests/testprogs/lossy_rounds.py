"""Rounds on a graph where node 1 skips round 1 and sends a round-0 message again in round 2:
its neighbours must note it missing in round 1, drop the late copy as stale and go on."""

from __future__ import annotations

from dsim.node import Node
from dsim.program import Program


class Peer(Node):
    async def run(self):
        heard = []
        for rnd in range(4):
            if self.rank == 1 and rnd == 2:
                await self.broadcast("r", {"round": 0, "late": True})
            if not (self.rank == 1 and rnd == 1):
                await self.broadcast("r", {"round": rnd})
            got = await self.gather_round("r", rnd, timeout=2.0 if self.rank != 1 else 10.0)
            heard.append(sorted(got))
        return {"heard": heard}


PROGRAM = Program(name="lossy_rounds", roles={"peer": Peer})
