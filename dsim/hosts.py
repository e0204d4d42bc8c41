"""Hosts files (OpenMPI / DeepSpeed style) and the deterministic layout of global ranks on machines.

One ``hostname-or-ip slots=N`` per line, ``#`` starts a comment. Machine i holds the N consecutive
ranks after those of machines 0..i-1; machine 0 runs the coordinator. Machines can also come without a
file (`HostList`): from Slurm, which names the machines but not their slots, or from machine 0, which
ships its hosts file's lines to the machines it starts over SSH.
"""

from __future__ import annotations

import errno
import ipaddress
import re
import socket
from collections.abc import Sequence
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


@dataclass(frozen=True)
class HostList:
    """Machines given without a hosts file; `slots` None spreads the graph's nodes evenly over them."""

    hosts: tuple[str, ...]
    slots: tuple[int, ...] | None = None


HostSource = str | Path | HostList
"""Where the machines of a run come from: a hosts file's path, or a `HostList`."""


def spread(hosts: Sequence[str], total: int) -> list[tuple[str, int]]:
    """Each machine gets total // n nodes and the first total % n one more (numpy.array_split's rule),
    so that ranks stay consecutive and the machines differ by at most one node."""
    n = len(hosts)
    if total < n:
        raise DsimError(f"{n} machines but the graph has only {total} nodes: every machine needs at least one")
    base, extra = divmod(total, n)
    return [(host, base + (1 if i < extra else 0)) for i, host in enumerate(hosts)]


def entries(source: HostSource, total: int) -> list[tuple[str, int]]:
    """The (host, slots) lines of a run of `total` nodes, from a hosts file or a `HostList`."""
    if not isinstance(source, HostList):
        return parse_hosts(source)
    if source.slots is None:
        return spread(source.hosts, total)
    return list(zip(source.hosts, source.slots, strict=True))


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


def find_self(hosts: Sequence[str]) -> list[int]:
    """The indices of the hosts that name this machine (by name or by one of its addresses)."""
    mine = local_addresses()
    return [i for i, host in enumerate(hosts) if host in mine]


def detect_machine(machines: list[Machine]) -> int:
    """The index of the one hosts-file entry that names this machine; --machine-rank when ambiguous."""
    matches = find_self([m.host for m in machines])
    if len(matches) != 1:
        found = "none" if not matches else ", ".join(machines[i].host for i in matches)
        raise DsimError(
            f"cannot tell which hosts-file entry is this machine (matching: {found}); pass --machine-rank I"
        )
    return matches[0]


def check_local(machines: list[Machine], me: int, ip: str) -> None:
    """Refuse to run as machine `me` where its nodes could not be reached: its address is not one of this
    computer's (a wrong --machine-rank or line order), or its name resolves to a loopback address here
    (Debian's "127.0.1.1 hostname" line in /etc/hosts) while other machines must reach it."""
    machine = machines[me]
    with socket.socket() as s:
        try:
            s.bind((ip, 0))
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                raise DsimError(f"machine {me} is {machine.host} ({ip}), which is not an address of this "
                                f"computer: check --machine-rank or the order of the machines") from None
            raise
    if len(machines) > 1 and ipaddress.ip_address(ip).is_loopback and not _loopback_name(machine.host):
        raise DsimError(f"machine {me} is {machine.host}, which resolves to {ip} here (a loopback address: "
                        f"/etc/hosts?): the other machines cannot reach it; list its address in a hosts file")


def _loopback_name(host: str) -> bool:
    """An address written out, or localhost: the user chose loopback (one computer playing machines)."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return host == "localhost"
