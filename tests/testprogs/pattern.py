"""Every node sends each neighbour a known array a few times: a byte pattern a sniffer can look for."""

from __future__ import annotations

from typing import Any

import numpy as np

from dsim.node import Node
from dsim.program import Program

MARKER = b"<dsim:plaintext>"  # 16 bytes; the array repeats it 4096 times
ARRAY = np.frombuffer(MARKER * 4096, dtype=np.uint8)


class Peer(Node):
    role = "peer"

    async def run(self) -> dict[str, Any]:
        for _ in range(self.config.rounds):
            await self.broadcast("known", ARRAY)
            for nbr in self.neighbours:
                got = (await self.recv("known", src=nbr)).payload
                if got.tobytes() != ARRAY.tobytes():
                    raise RuntimeError(f"node {self.rank}: the array from {nbr} arrived altered")
        return {"ok": True}


PROGRAM = Program(name="pattern", roles={"peer": Peer})
