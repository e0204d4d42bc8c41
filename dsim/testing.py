"""Run a node program's nodes in one process and one event loop: fast unit tests of programs.

    from dsim.testing import run_program

    run = run_program("gossip", nodes=4, sets=["rounds=5", "gossip.dim=8"])
    assert run.summary["max_error"] < run.summary["mean_start_error"]

The config is resolved as `dsim launch` resolves it (typed and validated: a bad key or value raises a
DsimError), the graph is built by the launcher's builder, and every node gets the data share, device,
NodeContext and Node class a worker would give it (dsim.hosting builds and runs nodes for both). The
nodes' endpoints have no sockets: every neighbour is reached in memory, with the frames, relays and byte
counts of a real run, including the start-up hellos, so `traffic` is what bandwidth.csv would hold.
Nothing is forked, no port is bound and no thread is started but those of the nodes' `offload`.

Every wait is bounded. A node that raises fails the run with `ProgramFailed` naming the node and the
reason; so does a run whose nodes have not all finished within `timeout` seconds, naming the nodes still
running and what they wait for. Node waits keep their own bound, the config's `timeout` (120 s unless
set, e.g. `sets=["timeout=5"]`). What a single process cannot show (processes dying, heartbeats,
several machines) is the launcher's to test.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import secrets
import shutil
import tempfile
import time
from collections.abc import Coroutine, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import networkx as nx

from dsim.churn import Conditions
from dsim.config import (
    Config,
    resolve,
)
from dsim.errors import DsimError, RunFailed
from dsim.hosting import (
    build_node,
    describe,
    link_table,
    load_share,
    log_start,
    log_traffic,
    make_endpoint,
    node_conditions,
    open_logs,
    open_message_log,
    place_nodes,
    run_node,
)
from dsim.launch import build_graph
from dsim.links import LinkTable
from dsim.nodelog import MessageLog, NodeLog
from dsim.program import Program
from dsim.programs import load_program
from dsim.results import bandwidth_rows, write_bandwidth, write_config
from dsim.transport import Endpoint, describe_source, links_settled

__all__ = ["HarnessResult", "ProgramFailed", "run_program", "run_program_async"]

T = TypeVar("T")
_CANCEL_GRACE_S = 5.0  # how long cancelled nodes get to unwind once the run has failed


class ProgramFailed(RunFailed):
    """A node raised, or the nodes did not finish in time; `ranks` are the nodes concerned."""

    def __init__(self, message: str, ranks: list[int]) -> None:
        super().__init__(message)
        self.ranks = ranks


@dataclass(frozen=True)
class HarnessResult:
    """What a run produced: per-node results and traffic, the program's summary, the logs."""

    results: dict[int, dict[str, Any]]  # what each node's `run` returned (JSON-safe, as a worker reports it)
    summary: dict[str, Any]  # program.summarize(results, graph)
    traffic: dict[int, dict[str, Any]]  # Counters.as_dict() per rank: the bandwidth.csv row, with by_kind
    logs: dict[int, list[dict[str, Any]]]  # each node's nodes/<rank>.jsonl events, in order
    graph: nx.Graph
    config: Config
    run_dir: Path

    def events(self, rank: int, event: str = "metric") -> list[dict[str, Any]]:
        """One node's logged events of one kind (its `self.log(...)` metrics by default)."""
        return [e for e in self.logs[rank] if e["event"] == event]


def run_program(
    algorithm: str | Program,
    *,
    nodes: int | None = 3,
    topology: str | None = "ring",
    sets: Iterable[str] = (),
    config: str | Path | None = None,
    flags: Mapping[str, Any] | None = None,
    run_dir: str | Path | None = None,
    timeout: float = 60.0,
) -> HarnessResult:
    """Run every node of `algorithm` (a registered name, a module path, or a Program) on one graph.

    `nodes` and `topology` act as the `--nodes` and `--topology` flags (None keeps the config file's
    value); `flags` are further flags as `dsim launch` passes them (e.g. {"seed": 3, "data":
    {"dataset": "digits"}}), `sets` are `--set key=value` strings and `config` a TOML file, with the
    launcher's precedence (file < flags < sets). `run_dir` (the config's `out` is not used) holds
    config.toml, nodes/<rank>.jsonl, bandwidth.csv and what the program writes; by default a fresh
    temporary directory, removed when the Python process exits. `timeout` bounds the run from the moment the nodes connect
    (after their data shares are loaded). Raises DsimError for a bad config and ProgramFailed when a
    node fails or `timeout` passes.
    """
    setup = _Setup.make(algorithm, nodes, topology, sets, config, flags, run_dir)
    return _run_in_own_loop(setup.run(timeout))


async def run_program_async(
    algorithm: str | Program,
    *,
    nodes: int | None = 3,
    topology: str | None = "ring",
    sets: Iterable[str] = (),
    config: str | Path | None = None,
    flags: Mapping[str, Any] | None = None,
    run_dir: str | Path | None = None,
    timeout: float = 60.0,
) -> HarnessResult:
    """`run_program` for a caller that is already inside an event loop; the nodes run in that loop
    (and offload to its default executor, which waits at loop close for a computation still running)."""
    setup = _Setup.make(algorithm, nodes, topology, sets, config, flags, run_dir)
    return await setup.run(timeout)


@dataclass(frozen=True)
class _Setup:
    """Everything decided before the loop runs: program, config, graph and run directory."""

    program: Program
    cfg: Config
    graph: nx.Graph
    run_dir: Path
    links: LinkTable | None
    conditions: Conditions | None

    @classmethod
    def make(cls, algorithm: str | Program, nodes: int | None, topology: str | None, sets: Iterable[str],
             config: str | Path | None, flags: Mapping[str, Any] | None, run_dir: str | Path | None) -> _Setup:
        given = {**(flags or {}), "nodes": nodes, "topology": topology}
        file = str(config) if config is not None else None
        sets = list(sets)
        if isinstance(algorithm, Program):
            program = algorithm
            cfg = resolve(file, {**given, "algorithm": program.name}, sets, program=program)
        else:
            cfg = resolve(file, {**given, "algorithm": algorithm}, sets)
            program = load_program(cfg.algorithm)
        graph = build_graph(cfg, program)
        links = link_table(cfg, program, graph)
        node_cond = node_conditions(cfg, program, graph)
        folder = Path(run_dir) if run_dir is not None else _session_dir()
        if (folder / "nodes").is_dir() and any((folder / "nodes").iterdir()):
            raise DsimError(f"{folder} already holds a run's node logs; choose another run_dir")
        folder.mkdir(parents=True, exist_ok=True)
        write_config(folder, cfg)
        return cls(program, cfg, graph, folder, links, node_cond)

    def role(self, rank: int) -> str:
        return self.program.role_of(rank, self.graph)

    async def run(self, timeout: float) -> HarnessResult:
        program, cfg, graph = self.program, self.cfg, self.graph
        loop = asyncio.get_running_loop()
        ranks = sorted(graph.nodes)
        devices = place_nodes(cfg, program, ranks)  # as a worker does; its torch flags are process-wide
        t0 = time.time()
        logs: dict[int, NodeLog] = {}
        endpoints: dict[int, Endpoint] = {}
        tasks: dict[asyncio.Task, int] = {}
        messages: MessageLog | None = None
        try:
            data = {}
            logs.update(open_logs(self.run_dir, ranks, t0))
            messages = open_message_log(cfg, self.run_dir, "harness", t0)
            for rank in ranks:
                log = logs[rank]
                endpoints[rank] = make_endpoint(None, cfg, graph, rank, log, self.links, messages)
                log_start(log, self.role(rank), endpoints[rank], devices[rank])
                if program.uses_data:
                    data[rank] = self._share(rank, devices[rank])
            deadline = loop.time() + timeout  # from the start barrier on, as node waits are
            run_id = secrets.token_hex(4)  # as long as a launch's: the headers, hence the byte counts, match
            for ep in endpoints.values():
                ep.connect(run_id, local=endpoints)
            await asyncio.gather(*(ep.say_hello(max(deadline - loop.time(), 0.0)) for ep in endpoints.values()))
            for rank in ranks:
                node = build_node(program, cfg, graph, rank, endpoints[rank], logs[rank], self.run_dir,
                                  data.get(rank), devices[rank], len(ranks), self.conditions)
                tasks[loop.create_task(run_node(node, logs[rank], devices[rank]), name=f"dsim-node-{rank}")] = rank
            results = await self._finish(tasks, endpoints, deadline, timeout)
            await _settle(endpoints, deadline)
            traffic = {rank: log_traffic(logs[rank], ep) for rank, ep in endpoints.items()}
        finally:
            await _cancel(list(tasks))
            for ep in endpoints.values():
                ep.close()
            for log in logs.values():
                log.close()
            if messages is not None:
                messages.close()
        write_bandwidth(self.run_dir, bandwidth_rows(traffic, {r: self.role(r) for r in ranks}, {}))
        return HarnessResult(results=results, summary=program.summarize(results, graph), traffic=traffic,
                             logs={rank: _read_log(self.run_dir, rank) for rank in ranks}, graph=graph,
                             config=cfg, run_dir=self.run_dir)

    def _share(self, rank: int, device: str) -> Any:
        try:
            return load_share(self.cfg, self.program, self.graph, rank, device)[0]
        except Exception as exc:
            raise ProgramFailed(f"node {rank} ({self.role(rank)}) failed to set up: {describe(exc)}",
                                [rank]) from exc

    async def _finish(self, tasks: dict[asyncio.Task, int], endpoints: dict[int, Endpoint], deadline: float,
                      timeout: float) -> dict[int, dict[str, Any]]:
        """Every node's result; the first failure, or the deadline, ends the run."""
        loop = asyncio.get_running_loop()
        results: dict[int, dict[str, Any]] = {}
        pending = set(tasks)
        while pending and loop.time() < deadline:
            done, pending = await asyncio.wait(pending, timeout=deadline - loop.time(),
                                               return_when=asyncio.FIRST_COMPLETED)
            for task in sorted(done, key=tasks.__getitem__):
                rank = tasks[task]
                if task.cancelled():
                    raise ProgramFailed(f"node {rank} ({self.role(rank)}) was cancelled", [rank])
                outcome = task.result()
                if outcome.failed:
                    raise ProgramFailed(f"node {rank} ({self.role(rank)}) failed: {outcome.reason}", [rank])
                results[rank] = outcome.result
        if pending:
            late = sorted(tasks[t] for t in pending)
            doing = "; ".join(self._doing(rank, endpoints[rank]) for rank in late)
            raise ProgramFailed(f"the nodes did not finish within {timeout:g} s: {doing}", late)
        return results

    def _doing(self, rank: int, endpoint: Endpoint) -> str:
        waits = [f"'{kind}' from {describe_source(src)}" for kind, src in endpoint.mailbox.waiting()]
        what = f"waits for {', '.join(waits)}" if waits else "is still running (not waiting for a message)"
        return f"node {rank} ({self.role(rank)}) {what}"


async def _settle(endpoints: Mapping[int, Endpoint], deadline: float) -> None:
    """Let the frames still in flight land, as a launch drains before it reads the counters.

    In memory every frame in flight is one callback on the loop (a relay adds one per hop), or waits in
    an emulated link's queue until its arrival time, so a few loop turns and the link queues' emptying
    deliver them all; then every message sent has been received, dropped or lost."""
    loop = asyncio.get_running_loop()
    counters = [ep.counters for ep in endpoints.values()]
    while sum(c.total.msgs_sent for c in counters) != sum(c.balance()["msgs_recv"] + c.msgs_dropped
                                                          for c in counters):
        if loop.time() >= deadline or not await links_settled(endpoints.values(), deadline - loop.time()):
            raise ProgramFailed("messages were still in flight at the deadline", sorted(endpoints))
        await asyncio.sleep(0)


async def _cancel(tasks: list[asyncio.Task]) -> None:
    """Cancel nodes still running and give them a bounded moment to unwind (an offloaded computation
    keeps its thread until it returns: threads cannot be interrupted)."""
    running = [t for t in tasks if not t.done()]
    for task in running:
        task.cancel()
    if running:
        await asyncio.wait(running, timeout=_CANCEL_GRACE_S)


def _session_dir() -> Path:
    """A fresh temporary run directory, readable until this Python process exits, then removed."""
    folder = Path(tempfile.mkdtemp(prefix="dsim-test-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def _read_log(run_dir: Path, rank: int) -> list[dict[str, Any]]:
    path = run_dir / "nodes" / f"{rank}.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _run_in_own_loop(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run, except that closing does not wait for offload threads still computing after a
    failure (Python 3.11's asyncio.run would join them, however long they take)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        main.close()
        raise RuntimeError("run_program was called inside a running event loop; await run_program_async instead")
    loop = asyncio.new_event_loop()
    executor = ThreadPoolExecutor(thread_name_prefix="dsim-offload")
    loop.set_default_executor(executor)
    try:
        return loop.run_until_complete(main)
    finally:
        try:
            leftover = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in leftover:
                task.cancel()
            if leftover:
                loop.run_until_complete(asyncio.wait(leftover))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            executor.shutdown(wait=False, cancel_futures=True)
            loop.close()
