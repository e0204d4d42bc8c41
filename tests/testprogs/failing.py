"""Gossip where node 1 raises in its first round: a failed run, for the launcher's failure paths."""

from __future__ import annotations

import dataclasses

from dsim.nodes.gossip import PROGRAM as GOSSIP


class FailingPeer(GOSSIP.roles["peer"]):
    async def run(self):
        if self.rank == 1:
            raise ValueError("node 1 gives up on purpose")
        return await super().run()


PROGRAM = dataclasses.replace(GOSSIP, name="failing", roles={"peer": FailingPeer})
