"""Hosting one node: what a worker process and the in-process test harness (dsim.testing) share.

Both build a node the same way (its log, its endpoint, its data share on its device, its NodeContext),
announce it with the same `start` event, and run it the same way: the result made JSON-safe and checked
to travel as msgpack, or the exception turned into one line that names where it was raised. Keeping
this in one place is what lets a harness test say something about a real run.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack
import networkx as nx

from dsim.churn import Conditions, conditions
from dsim.devices import node_devices, on_device, peak_memory_mb, prepare_process
from dsim.errors import DsimError
from dsim.links import LinkTable, build_links
from dsim.node import Node, NodeContext
from dsim.nodelog import MessageLog, NodeLog, json_safe
from dsim.options import to_dict
from dsim.program import Program
from dsim.routing import Routes
from dsim.transport import Endpoint, Traffic

if TYPE_CHECKING:
    from dsim.config import Config
    from dsim.hub import Hub


def describe(exc: BaseException) -> str:
    """One line: the exception and where it was raised (a DsimError's message is already that line)."""
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" (at {Path(tb[-1].filename).name}:{tb[-1].lineno})" if tb else ""
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}{where}" if not isinstance(exc, DsimError) else text


def place_nodes(cfg: Config, program: Program, ranks: list[int], first_rank: int = 0) -> dict[int, str]:
    """Each node's device, by its rank's position on this machine, with the process set up for them
    (deterministic kernels when asked) before CUDA starts."""
    devices = node_devices(cfg.device, cfg.gpus, [r - first_rank for r in ranks], uses_torch=program.uses_data)
    prepare_process(devices, cfg.deterministic)
    return dict(zip(ranks, devices, strict=True))


def open_logs(run_dir: Path, ranks: list[int], t0: float) -> dict[int, NodeLog]:
    """The nodes' event logs, nodes/<rank>.jsonl in the run directory."""
    folder = run_dir / "nodes"
    folder.mkdir(parents=True, exist_ok=True)
    return {rank: NodeLog(folder / f"{rank}.jsonl", rank, t0) for rank in ranks}


def open_message_log(cfg: Config, run_dir: Path, process: str, t0: float) -> MessageLog | None:
    """The process's message log, messages/<process>.csv, or None when `net.message_log` is off."""
    if not cfg.net.message_log:
        return None
    folder = run_dir / "messages"
    folder.mkdir(parents=True, exist_ok=True)
    return MessageLog(folder / f"{process}.csv", t0)


def link_table(cfg: Config, program: Program, graph: nx.Graph) -> LinkTable | None:
    """The run's emulated links ([links] and its file, checked against the graph), None when all are
    ideal; what the launcher resolves before it forks and the harness before it builds nodes."""
    return build_links(cfg.links, graph, cfg.seed, lambda rank: program.role_of(rank, graph))


def node_conditions(cfg: Config, program: Program, graph: nx.Graph) -> Conditions | None:
    """Churn schedules and straggler factors of every node (None: neither configured); a bad trace
    file is refused here, before anything starts."""
    return conditions(cfg.churn, cfg.stragglers, cfg.seed, {r: program.role_of(r, graph) for r in graph.nodes})


def make_endpoint(hub: Hub | None, cfg: Config, graph: nx.Graph, rank: int,
                  log: NodeLog, links: LinkTable | None = None, messages: MessageLog | None = None,
                  process_totals: Traffic | None = None) -> Endpoint:
    """The node's endpoint, unconnected, on its process's hub; `hub=None` makes one without sockets,
    whose neighbours must all be reached in memory. `links`: the run's link table (None: ideal links);
    `messages`: its process's message log (None: off); `process_totals`: the traffic sums its process
    keeps over all its nodes."""
    neighbours = tuple(sorted(graph.neighbors(rank)))
    max_bytes = int(cfg.net.max_message_mb * (1 << 20))
    return Endpoint(hub, rank, neighbours, Routes(graph, rank), max_bytes, log.write, links,
                    None if messages is None else messages.record, process_totals)


def log_start(log: NodeLog, role: str, endpoint: Endpoint, device: str) -> None:
    """The `start` event: who the node is, where it listens, who its neighbours are, and how its
    process drives its sockets (io: "native", dsim's compiled calls, or "pyzmq")."""
    log.write("start", role=role, pid=os.getpid(), address=endpoint.address,
              neighbours=list(endpoint.neighbours), device=device,
              io="memory" if endpoint.hub is None else endpoint.hub.io)


def log_share(log: NodeLog, data: Any) -> None:
    """The `share` event: the node's sample counts and per-class train labels, so a report can show
    every node's label distribution without re-partitioning the dataset. One bincount: cheap.

    (The `start` event is written before the share is loaded, hence an event of its own.)"""
    import torch

    counts = torch.bincount(data.train_y.long().cpu(), minlength=data.dataset.num_classes).tolist()
    log.write("share", train=len(data.train_y), val=len(data.val_y),
              labels={str(c): n for c, n in enumerate(counts) if n})


def load_share(cfg: Config, program: Program, graph: nx.Graph, rank: int,
               device: str) -> tuple[Any, dict[str, str]]:
    """The node's data share on its device, and the fingerprints machines compare before a run."""
    from dsim.data import node_data

    nd = node_data(to_dict(cfg.data), num_parts=program.num_parts(graph), part=program.data_part(rank, graph),
                   seed=cfg.seed)
    return on_device(nd, device), {"data": nd.fingerprint, "part": nd.part_fingerprint}


def build_node(program: Program, cfg: Config, graph: nx.Graph, rank: int, endpoint: Endpoint, log: NodeLog,
               run_dir: Path, data: Any, device: str, process_nodes: int,
               conditions: Conditions | None = None) -> Node:
    """The rank's role as a Node, with its NodeContext (the config and the program's own option table).

    Built at the run's start: its churn schedule (if any) counts from now. Constructors do no work:
    the node starts when `run_node` runs it."""
    if data is not None:
        log_share(log, data)
    slowdown = 1.0
    if conditions is not None:
        endpoint.follow_schedule(conditions.schedule(rank))
        slowdown = conditions.slowdown(rank)
    ctx = NodeContext(rank, program.role_of(rank, graph), graph, cfg, endpoint, log, cfg.program_options,
                      run_dir, data, device, process_nodes, slowdown)
    return program.roles[ctx.role](ctx)


def log_traffic(log: NodeLog, endpoint: Endpoint) -> dict[str, Any]:
    """The node's closing events: the offline periods it went through (churn), then its traffic."""
    periods = endpoint.offline_periods()
    if periods:
        log.write("offline", periods=[[round(a, 3), round(b, 3)] for a, b in periods])
    stats = endpoint.counters.as_dict()
    log.write("traffic", **stats)
    return stats


@dataclass(frozen=True)
class NodeOutcome:
    """How one node's `run` ended: its JSON-safe result, or the one-line reason it failed."""

    rank: int
    result: dict[str, Any] | None = None
    reason: str | None = None
    device: str = "cpu"
    peak_memory_mb: float = 0.0

    @property
    def failed(self) -> bool:
        return self.reason is not None


async def run_node(node: Node, log: NodeLog, device: str) -> NodeOutcome:
    """Run a node to its end and log how it ended (`done` or `error`); cancellation propagates."""
    try:
        result = json_safe(await node.run() or {})
        msgpack.packb(result)  # what a worker sends the coordinator; a result that cannot travel fails here
    except Exception as exc:
        reason = describe(exc)
        log.write("error", reason=reason, traceback=traceback.format_exc())
        return NodeOutcome(node.rank, reason=reason)
    peak = round(peak_memory_mb(device), 1)
    log.write("done", result=result, device=device, peak_memory_mb=peak)
    return NodeOutcome(node.rank, result=result, device=device, peak_memory_mb=peak)
