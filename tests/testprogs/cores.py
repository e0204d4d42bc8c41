"""Every node asks for all cores and reports torch's thread count: packed nodes must not change it."""

from __future__ import annotations

from dsim.node import Node
from dsim.program import Program


class Peer(Node):
    async def run(self):
        import torch

        before = torch.get_num_threads()
        self.use_all_cores()
        return {"before": before, "after": torch.get_num_threads()}


PROGRAM = Program(name="cores", roles={"peer": Peer})
