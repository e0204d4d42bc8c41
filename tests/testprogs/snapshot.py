"""Send-then-overwrite: a message carries the arrays as they were at `send`, in memory or over sockets."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dsim.node import Node
from dsim.program import Program

SIZES = (100, 100_000)  # an array inlined in the header and one sent as its own frame


class Peer(Node):
    role = "peer"

    async def run(self) -> dict[str, Any]:
        other = 1 - self.rank
        if self.rank == 0:
            arrays = [np.full(n, 7.0, dtype=np.float32) for n in SIZES]
            tensor = torch.full((SIZES[1],), 7.0)
            await self.send(other, "data", {"arrays": arrays, "tensor": tensor})
            for a in arrays:
                a[:] = -1.0
            tensor.fill_(-1.0)
            await self.recv("done", src=other)
            return {}
        payload = (await self.recv("data", src=other)).payload
        seen = [float(a.min()) for a in payload["arrays"]] + [float(payload["tensor"].min())]
        await self.send(other, "done")
        return {"minimums": seen}


PROGRAM = Program(name="snapshot", roles={"peer": Peer})
