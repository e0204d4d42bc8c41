"""Emulated links: the `[links]` table, the per-link table every node resolves, one link's timing.

Every directed link u -> v of the graph has a rate (bytes per second, unlimited by default), a
propagation latency with optional jitter, and a loss probability. The runtime (dsim.transport) applies
them to every message on every path: sockets, in-memory delivery between packed nodes, and what relays
forward (a relay's outgoing link carries it). The model, per directed link:

- serialisation: a message of n bytes occupies the link for n / rate seconds, queued behind the
  messages before it on the same link (a NIC queue): it starts when the previous one has finished;
- propagation: it arrives latency + jitter later (jitter drawn uniformly in [0, jitter) from the
  link's seeded generator), never before the previous message on that link arrived (FIFO, as TCP);
- loss: with probability `loss` it is lost (counted and logged by its sender, never half-delivered).
  A lost message has occupied the link all the same. Start-up greetings are never lost (they stand
  for connection set-up, which TCP retries).

Resolution: a node's uplink and downlink rates and the latency, jitter and loss of its outgoing links
come from the defaults, then its role's table ([links.server], [links.client], [links.peer]), then a
seeded heterogeneity draw that scales its uplink, then its row in the links file; a directed link's
rate is min(sender's uplink, receiver's downlink) unless its own row in the file sets it, and its
latency, jitter and loss are the sender's unless its row sets them. Everything is a function of the
config, the graph, the links file and the seed, so every node (on any machine) resolves the same
table without a message; a node resolves only its own links, lazily, so a 10,000-node graph costs
nothing up front but reading the file.
"""

from __future__ import annotations

import csv
import hashlib
import math
import random
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import networkx as nx
from msgspec import Meta

from dsim.errors import DsimError
from dsim.options import Options

__all__ = ["LinksOptions", "RoleLinks", "LinkSpec", "LinkTable", "Link", "build_links", "parse_rate",
           "parse_duration"]

UNLIMITED = math.inf
Heterogeneity = Literal["none", "lognormal", "uniform"]

_NUMBER = r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"
_RATE = re.compile(rf"^{_NUMBER}\s*([a-zA-Z/]*)$")
_DURATION = re.compile(rf"^{_NUMBER}\s*([a-zµ]*)$")
_PREFIX = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_SECONDS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_RATE_UNITS = "bit, kbit, Mbit, Gbit (bits/s; also Mbps) or B, kB, MB, GB (bytes/s; also MB/s)"


def parse_rate(value: str | float) -> float:
    """A rate in bytes per second from '10Mbit' (bits/s), '2MB' (bytes/s) and the like; SI prefixes
    (k = 1000). '' or 'inf' is unlimited. Raises ValueError naming what is wrong."""
    if isinstance(value, int | float):
        if value == math.inf:
            return UNLIMITED
        raise ValueError(f"no unit (use {_RATE_UNITS}; '' or 'inf' = unlimited)")
    text = value.strip()
    if text in ("", "inf"):
        return UNLIMITED
    if text.startswith("-"):
        raise ValueError("negative; a rate must be > 0 ('' or 'inf' = unlimited)")
    match = _RATE.match(text)
    if match is None:
        raise ValueError(f"not a rate (use {_RATE_UNITS}; '' or 'inf' = unlimited)")
    number, unit = float(match.group(1)), match.group(2)
    if not unit:
        raise ValueError(f"no unit (use {_RATE_UNITS})")
    prefix, base = (unit[:1], unit[1:]) if len(unit) > 1 and unit[:1].lower() in _PREFIX else ("", unit)
    bits = {"bit": True, "bit/s": True, "bps": True, "B": False, "B/s": False, "Bps": False}.get(base)
    if bits is None:
        raise ValueError(f"unknown unit '{unit}' (use {_RATE_UNITS})")
    if number <= 0:
        raise ValueError("a rate must be > 0 ('' or 'inf' = unlimited)")
    rate = number * _PREFIX[prefix.lower()]
    return rate / 8 if bits else rate


def parse_duration(value: str | float) -> float:
    """Seconds from '20ms', '0.5s', '100us' (also 'ns', 'µs'); '' or 0 is none. Raises ValueError."""
    if isinstance(value, int | float):
        if value == 0:
            return 0.0
        raise ValueError("no unit (use s, ms, us or ns, e.g. '20ms')")
    text = value.strip()
    if text in ("", "0"):
        return 0.0
    if text.startswith("-"):
        raise ValueError("negative; a duration must be >= 0")
    match = _DURATION.match(text)
    if match is not None and not match.group(2):
        raise ValueError("no unit (use s, ms, us or ns, e.g. '20ms')")
    if match is None or match.group(2) not in _SECONDS:
        unit = match.group(2) if match else text
        raise ValueError(f"unknown unit '{unit}' (use s, ms, us or ns, e.g. '20ms')")
    return float(match.group(1)) * _SECONDS[match.group(2)]


def parse_loss(value: str | float) -> float:
    """A loss probability in [0, 1]."""
    try:
        loss = float(value)
    except ValueError:
        raise ValueError("not a number in [0, 1]") from None
    if not 0.0 <= loss <= 1.0:
        raise ValueError("a loss probability must lie in [0, 1]")
    return loss


def _check(table: Options, parsers: dict[str, Callable[[Any], float]]) -> None:
    """Parse every set value of a table once, so a bad unit is refused when the config is resolved."""
    for key, parse in parsers.items():
        value = getattr(table, key)
        if value == "":
            continue
        try:
            parse(value)
        except ValueError as exc:
            raise ValueError(f"{key} = {value!r}: {exc}") from None


_RATE_DOC = "e.g. 10Mbit, 1Gbit, 500kbit (bits/s) or 2MB (bytes/s)"


class RoleLinks(Options):
    """Overrides for the nodes of one role; '' keeps the value of [links]."""

    up: Annotated[str | float, Meta(description=f"uplink rate of these nodes, {_RATE_DOC}; 'inf' = unlimited")] = ""
    down: Annotated[str | float, Meta(description="downlink rate of these nodes")] = ""
    latency: Annotated[str | float, Meta(description="latency of the links out of these nodes, e.g. 20ms")] = ""
    jitter: Annotated[str | float, Meta(description="jitter of the links out of these nodes")] = ""
    loss: Annotated[float | str, Meta(description="loss probability of the links out of these nodes, in [0, 1]")] = ""

    def __post_init__(self) -> None:
        _check(self, {"up": parse_rate, "down": parse_rate, "latency": parse_duration, "jitter": parse_duration,
                      "loss": parse_loss})


class LinksOptions(Options):
    """Emulated links (bandwidth, latency, jitter, loss of every directed link); off by default."""

    bandwidth: Annotated[str | float, Meta(description=f"every node's uplink and downlink rate, {_RATE_DOC}; '' or 'inf' = unlimited")] = ""
    latency: Annotated[str | float, Meta(description="one-way latency of every link, e.g. 20ms, 0.5s, 100us")] = "0ms"
    jitter: Annotated[str | float, Meta(description="extra delay drawn uniformly in [0, jitter) per message (seeded; never reorders a link)")] = "0ms"
    loss: Annotated[float, Meta(ge=0, le=1, description="probability that a message is lost on a link (seeded per link)")] = 0.0
    file: Annotated[str, Meta(description="CSV of per-link and per-node settings: src,dst,bandwidth,latency,jitter,loss")] = ""
    heterogeneity: Annotated[Heterogeneity, Meta(description="per-node uplink spread: none, lognormal (mean 1, sigma) or uniform (1 +- sigma); seeded")] = "none"
    sigma: Annotated[float, Meta(ge=0, description="spread of the heterogeneity draw")] = 0.5
    server: Annotated[RoleLinks, Meta(description="overrides for the server node ('' keeps [links]' value)")] = msgspec.field(default_factory=RoleLinks)
    client: Annotated[RoleLinks, Meta(description="overrides for the client nodes ('' keeps [links]' value)")] = msgspec.field(default_factory=RoleLinks)
    peer: Annotated[RoleLinks, Meta(description="overrides for the peer nodes of serverless programs ('' keeps [links]' value)")] = msgspec.field(default_factory=RoleLinks)

    def __post_init__(self) -> None:
        _check(self, {"bandwidth": parse_rate, "latency": parse_duration, "jitter": parse_duration})
        if self.heterogeneity == "uniform" and self.sigma >= 1:
            raise ValueError(f"heterogeneity 'uniform' draws from [1 - sigma, 1 + sigma]: sigma must be < 1, "
                             f"got {self.sigma:g}")

    def role(self, name: str) -> RoleLinks | None:
        """The table of a role, None for roles without one (a custom program's)."""
        return getattr(self, name, None) if name in ("server", "client", "peer") else None


@dataclass(frozen=True)
class LinkSpec:
    """One directed link: rate in bytes/s (inf = unlimited), latency and jitter in s, loss probability."""

    rate: float = UNLIMITED
    latency: float = 0.0
    jitter: float = 0.0
    loss: float = 0.0

    @property
    def cost(self) -> float:
        """Serialisation seconds per byte."""
        return 0.0 if self.rate == UNLIMITED else 1.0 / self.rate

    @property
    def ideal(self) -> bool:
        return self.rate == UNLIMITED and self.latency == 0 and self.jitter == 0 and self.loss == 0


@dataclass(frozen=True)
class _Node:
    up: float
    down: float
    latency: float
    jitter: float
    loss: float


@dataclass(frozen=True)
class _Row:
    """The cells of one links-file row that are set (None = inherited)."""

    rate: float | None
    latency: float | None
    jitter: float | None
    loss: float | None

    def set_cells(self) -> dict[str, float]:
        return {k: v for k, v in vars(self).items() if v is not None}


_COLUMNS = ("src", "dst", "bandwidth", "latency", "jitter", "loss")
_CELLS = (("bandwidth", parse_rate), ("latency", parse_duration), ("jitter", parse_duration), ("loss", parse_loss))


class LinkTable:
    """Every directed link's settings, resolved lazily from the config, the graph, the file and the seed."""

    def __init__(self, options: LinksOptions, seed: int, role_of: Callable[[int], str],
                 node_up: dict[int, _Row] | None = None, node_down: dict[int, _Row] | None = None,
                 edges: dict[tuple[int, int], _Row] | None = None, digest: str = "") -> None:
        self.options, self.seed, self.role_of = options, seed, role_of
        self._up_rows, self._down_rows, self._edge_rows = node_up or {}, node_down or {}, edges or {}
        self.digest = digest  # of the links file: machines of one run must read the same one
        self._nodes: dict[int, _Node] = {}

    def node(self, rank: int) -> _Node:
        """A node's uplink and downlink rates and its outgoing links' latency, jitter and loss."""
        got = self._nodes.get(rank)
        if got is None:
            got = self._nodes[rank] = self._resolve_node(rank)
        return got

    def _resolve_node(self, rank: int) -> _Node:
        opt = self.options
        rate = parse_rate(opt.bandwidth)
        values = {"up": rate, "down": rate, "latency": parse_duration(opt.latency),
                  "jitter": parse_duration(opt.jitter), "loss": float(opt.loss)}
        role = opt.role(self.role_of(rank))
        if role is not None:
            parsers = {"up": parse_rate, "down": parse_rate, "latency": parse_duration, "jitter": parse_duration,
                       "loss": parse_loss}
            values.update({k: parse(getattr(role, k)) for k, parse in parsers.items() if getattr(role, k) != ""})
        values["up"] *= self._spread(rank)
        up_row, down_row = self._up_rows.get(rank), self._down_rows.get(rank)
        if up_row is not None:
            cells = up_row.set_cells()
            if "rate" in cells:
                values["up"] = cells.pop("rate")
            values.update(cells)
        if down_row is not None and down_row.rate is not None:
            values["down"] = down_row.rate
        return _Node(**values)

    def _spread(self, rank: int) -> float:
        """The node's seeded uplink multiplier (1 without heterogeneity); inf stays inf."""
        kind, sigma = self.options.heterogeneity, self.options.sigma
        if kind == "none" or sigma == 0:
            return 1.0
        rng = random.Random(f"dsim.links.up:{self.seed}:{rank}")
        if kind == "lognormal":
            return rng.lognormvariate(-sigma * sigma / 2, sigma)  # mean 1
        return rng.uniform(1 - sigma, 1 + sigma)

    def spec(self, u: int, v: int) -> LinkSpec:
        """The directed link u -> v."""
        src, dst = self.node(u), self.node(v)
        spec = LinkSpec(min(src.up, dst.down), src.latency, src.jitter, src.loss)
        row = self._edge_rows.get((u, v))
        return spec if row is None else replace(spec, **row.set_cells())

    def link(self, u: int, v: int) -> Link:
        """Fresh state for the link u -> v with its own seeded generator (same seed, same draws)."""
        return Link(self.spec(u, v), f"dsim.links:{self.seed}:{u}->{v}")


def build_links(options: LinksOptions, graph: nx.Graph, seed: int, role_of: Callable[[int], str]) -> LinkTable | None:
    """The run's link table, None when every link is left ideal (the runtime's fast path). Reads and
    checks the links file against the graph: a bad cell or a row naming a non-edge is a DsimError."""
    if options == LinksOptions():
        return None
    node_up: dict[int, _Row] = {}
    node_down: dict[int, _Row] = {}
    edges: dict[tuple[int, int], _Row] = {}
    digest = ""
    if options.file:
        digest = _read_file(Path(options.file), graph, node_up, node_down, edges)
    return LinkTable(options, seed, role_of, node_up, node_down, edges, digest)


def _read_file(path: Path, graph: nx.Graph, node_up: dict[int, _Row], node_down: dict[int, _Row],
               edges: dict[tuple[int, int], _Row]) -> str:
    where = f"links.file {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DsimError(f"{where} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DsimError(f"{where} cannot be read: {exc}") from None
    reader = csv.DictReader(text.splitlines())
    header = [c.strip() for c in reader.fieldnames or []]
    if "src" not in header or "dst" not in header or any(c not in _COLUMNS for c in header):
        raise DsimError(f"{where}: the header must name src, dst and any of bandwidth, latency, jitter, loss; "
                        f"got {','.join(header) or 'nothing'}")
    reader.fieldnames = header
    for row in reader:
        line = reader.line_num
        cells = {k: (v or "").strip() for k, v in row.items() if k is not None}
        if None in row:
            raise DsimError(f"{where} line {line}: more cells than columns")
        try:
            src, dst = _rank(cells["src"], graph), _rank(cells["dst"], graph)
            parsed = _Row(*(_cell(cells, k, parse) for k, parse in _CELLS))
        except ValueError as exc:
            raise DsimError(f"{where} line {line}: {exc}") from None
        if src is None and dst is None:
            raise DsimError(f"{where} line {line}: src or dst must name a node")
        if src is not None and dst is not None:
            if src == dst or not graph.has_edge(src, dst):
                raise DsimError(f"{where} line {line}: {src} -> {dst} is not an edge of the graph")
            table, key, what = edges, (src, dst), f"link {src} -> {dst}"
        elif src is not None:
            table, key, what = node_up, src, f"node {src}'s uplink"
        else:
            if parsed.latency is not None or parsed.jitter is not None or parsed.loss is not None:
                raise DsimError(f"{where} line {line}: a downlink row (no src) sets only bandwidth; latency, "
                                f"jitter and loss belong to the sender")
            table, key, what = node_down, dst, f"node {dst}'s downlink"
        if key in table:
            raise DsimError(f"{where} line {line}: {what} is set twice")
        table[key] = parsed
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _cell(cells: dict[str, str], column: str, parse: Callable[[str], float]) -> float | None:
    """A set cell's value, None for an empty (inherited) one."""
    text = cells.get(column, "")
    if not text:
        return None
    try:
        return parse(text)
    except ValueError as exc:
        raise ValueError(f"{column} {text!r}: {exc}") from None


def _rank(cell: str, graph: nx.Graph) -> int | None:
    if cell == "":
        return None
    try:
        rank = int(cell)
    except ValueError:
        raise ValueError(f"'{cell}' is not a node rank") from None
    if rank not in graph:
        raise ValueError(f"node {rank} is not in the graph (ranks 0-{graph.number_of_nodes() - 1})")
    return rank


class Link:
    """The state of one directed link: when it is free again, its last arrival, its seeded generator
    (made only for a link that draws), and what waits to be handed over (the transport owns the queue
    and the timer)."""

    __slots__ = ("spec", "cost", "latency", "jitter", "loss", "rng", "free_at", "last_arrival", "queue", "timer",
                 "stall")

    def __init__(self, spec: LinkSpec, seed_key: str) -> None:
        self.spec = spec
        self.cost, self.latency, self.jitter, self.loss = spec.cost, spec.latency, spec.jitter, spec.loss
        self.rng = random.Random(seed_key) if spec.loss or spec.jitter else None
        self.free_at = self.last_arrival = -math.inf
        self.queue: deque[tuple] = deque()  # waiting messages, in arrival order (the transport's items)
        self.timer: Any = None  # the loop's handle that hands over the queue's head when it is due
        self.stall: Any = None  # a task sending the head when the socket would have blocked

    def admit(self, nbytes: int, now: float, lossy: bool = True) -> tuple[float | None, float, float]:
        """Put a message on the link at `now`: (its arrival time, None when lost; serialisation s;
        propagation s). It starts when the previous message has finished serialising."""
        tx = nbytes * self.cost
        start = now if now > self.free_at else self.free_at
        self.free_at = done = start + tx
        if lossy and self.loss and self.rng.random() < self.loss:
            return None, tx, 0.0
        delay = self.latency + self.rng.random() * self.jitter if self.jitter else self.latency
        arrival = done + delay
        if arrival < self.last_arrival:
            arrival = self.last_arrival  # FIFO: jitter never lets a message overtake the one before it
        self.last_arrival = arrival
        return arrival, tx, delay
