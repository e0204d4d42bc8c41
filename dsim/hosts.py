"""Hosts files (OpenMPI / DeepSpeed style) and the deterministic layout of global ranks on machines.

One ``hostname-or-ip slots=N`` per line, ``#`` starts a comment. Machine i holds the N consecutive
ranks after those of machines 0..i-1; machine 0 runs the coordinator.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from pathlib import Path

import psutil

from dsim.errors import DsimError

_LINE = re.compile(r"^(?P<host>[A-Za-z0-9_.:\-\[\]]+)\s+slots\s*=\s*(?P<slots>\d+)$")


@dataclass(frozen=True)
class Machine:
    index: int
    host: str
    slots: int
    first_rank: int

    @property
    def ranks(self) -> range:
        return range(self.first_rank, self.first_rank + self.slots)


def parse_hosts(path: str | Path) -> list[tuple[str, int]]:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise DsimError(f"cannot read hosts file {path}: {exc.strerror}") from None
    entries: list[tuple[str, int]] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = _LINE.match(line)
        if not match:
            raise DsimError(f"hosts file {path} line {number}: expected 'HOST slots=N', got '{line}'")
        host, slots = match["host"], int(match["slots"])
        if slots < 1:
            raise DsimError(f"hosts file {path} line {number}: slots must be at least 1")
        if host in seen:
            raise DsimError(f"hosts file {path} line {number}: host {host} already listed on line {seen[host]}")
        seen[host] = number
        entries.append((host, slots))
    if not entries:
        raise DsimError(f"hosts file {path} lists no hosts")
    return entries


def layout(entries: list[tuple[str, int]], total_nodes: int) -> list[Machine]:
    slots = sum(s for _, s in entries)
    if slots != total_nodes:
        raise DsimError(f"the hosts file has {slots} slots but the graph has {total_nodes} nodes; they must match")
    machines, first = [], 0
    for index, (host, n) in enumerate(entries):
        machines.append(Machine(index, host, n, first))
        first += n
    return machines


def local_addresses() -> set[str]:
    names = {socket.gethostname(), socket.getfqdn(), "localhost"}
    for addrs in psutil.net_if_addrs().values():
        names.update(a.address.split("%")[0] for a in addrs if a.family in (socket.AF_INET, socket.AF_INET6))
    return names


def detect_machine(machines: list[Machine]) -> int:
    """The index of the one hosts-file entry that names this machine; --machine-rank when ambiguous."""
    mine = local_addresses()
    matches = [m.index for m in machines if m.host in mine]
    if len(matches) != 1:
        found = "none" if not matches else ", ".join(machines[i].host for i in matches)
        raise DsimError(
            f"cannot tell which hosts-file entry is this machine (matching: {found}); pass --machine-rank I"
        )
    return matches[0]
