"""Every node asks for all cores and reports torch's thread count (packed nodes must not change it),
and the CPU scheduling policy of each thread of its process (by name: the loop's, ZeroMQ's, torch's)."""

from __future__ import annotations

from pathlib import Path

from dsim.node import Node
from dsim.program import Program


class Peer(Node):
    async def run(self):
        import torch

        before = torch.get_num_threads()
        self.use_all_cores()
        torch.ones(64, 64) @ torch.ones(64, 64)  # torch's pool starts its threads
        return {"before": before, "after": torch.get_num_threads(), "policies": _thread_policies()}


def _thread_policies() -> dict[str, int]:
    """Each thread's scheduling policy (field 41 of /proc/<pid>/task/<tid>/stat: 0 normal, 3 batch)."""
    policies = {}
    for task in Path("/proc/self/task").iterdir():
        name = (task / "comm").read_text().strip()
        stat = (task / "stat").read_text()
        policies[f"{name} {task.name}"] = int(stat[stat.rindex(")") + 2:].split()[38])
    return policies


PROGRAM = Program(name="cores", roles={"peer": Peer})
