"""CollabDM where client 2 never answers: the server must go on without it and record it."""

from __future__ import annotations

import dataclasses

from dsim.nodes.collabdm import COLLABDM


class SilentClient(COLLABDM.roles["client"]):
    async def run(self):
        if self.rank == 2:
            await self.recv("assign", src=self.server)
            return {"silent": True}
        return await super().run()


PROGRAM = dataclasses.replace(COLLABDM, roles={"server": COLLABDM.roles["server"], "client": SilentClient})
