"""A worker process: hosts one or more nodes in one asyncio loop and talks to the coordinator.

Life of a worker: bind every node's socket and compute its data share -> register (addresses, data
fingerprints) -> receive the peer table -> connect and greet every neighbour -> ready -> start barrier
-> run the node programs while relaying and heart-beating -> answer termination queries -> stop.
Every wait is bounded; if the coordinator goes silent the worker stops on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import os
import resource
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import networkx as nx
import zmq
import zmq.asyncio

from dsim import control, native, secure
from dsim.churn import Conditions
from dsim.config import Config
from dsim.hosting import (
    build_node,
    describe,
    load_share,
    log_start,
    log_traffic,
    make_endpoint,
    open_logs,
    open_message_log,
    place_nodes,
    run_node,
)
from dsim.hub import Hub
from dsim.links import LinkTable
from dsim.node import Node
from dsim.nodelog import MessageLog, NodeLog
from dsim.program import Program
from dsim.progress import BOARD
from dsim.transport import Endpoint, Traffic, links_settled
from dsim.wire import WireError

M = TypeVar("M", bound=control.Message)


@dataclass
class WorkerSpec:
    name: str
    ranks: list[int]
    control: str
    host: str
    run_dir: Path
    config: Config
    graph: nx.Graph
    program: Program
    t0: float
    threads: int
    first_rank: int = 0  # this machine's first rank: a node's local rank picks its GPU
    links: LinkTable | None = None  # the emulated links, resolved by the launcher (None: all ideal)
    conditions: Conditions | None = None  # churn schedules and straggler factors (None: neither)
    key: secure.RunKey | None = None  # the run key (None: plain sockets); reaches workers by fork alone


class CoordinatorLost(Exception):
    pass


class Stopped(Exception):
    pass


class Worker:
    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        cfg = spec.config
        self.timeout = cfg.timeout
        self.start_timeout = cfg.net.start_timeout
        self.heartbeat = cfg.net.heartbeat
        self.heartbeat_timeout = cfg.net.heartbeat_timeout
        self.hub: Hub | None = None
        self.endpoints: dict[int, Endpoint] = {}
        self.logs: dict[int, NodeLog] = {}
        self.messages: MessageLog | None = None
        self.traffic = Traffic()  # the sums over this process's nodes, kept by their counters
        self.roles: dict[int, str] = {}
        self.tasks: list[asyncio.Task] = []
        self.beats: Heartbeat | None = None
        self.devices: dict[int, str] = {}

    async def run(self) -> int:
        self.ctx = zmq.asyncio.Context()
        self.ctx.MAX_SOCKETS = 65536
        self.gate = secure.Gate(self.ctx, self.spec.key)
        self.ctl = self.ctx.socket(zmq.DEALER)
        self.ctl.setsockopt(zmq.IDENTITY, self.spec.name.encode())
        self.ctl.setsockopt(zmq.LINGER, 2000)
        secure.dial(self.ctl, self.spec.key)
        self.ctl.connect(self.spec.control)
        try:
            with contextlib.suppress(Stopped):  # told to stop before the run started
                await self._serve()
            await self._report_final()
            return 0
        except CoordinatorLost as exc:
            print(f"dsim worker {self.spec.name}: {exc}; stopping", file=sys.stderr)
            return 3
        except Exception as exc:  # a runtime bug: tell the coordinator who failed and why, then exit
            reason = f"worker {self.spec.name} crashed: {describe(exc)}"
            print(f"dsim: {reason}\n{traceback.format_exc()}", file=sys.stderr)
            await self._send(control.Failed(name=self.spec.name, rank=self.spec.ranks[0], reason=reason,
                                            phase="runtime"))
            return 4
        finally:
            if self.beats is not None:
                self.beats.stop()
            for task in self.tasks:
                task.cancel()
            for ep in self.endpoints.values():
                ep.close()
            if self.hub is not None:
                self.hub.close()
            for log in self.logs.values():
                log.close()
            if self.messages is not None:
                self.messages.close()
            self.ctl.close(linger=1000)
            self.gate.stop()
            self.ctx.term()

    async def _send(self, msg: control.Message) -> None:
        await self.ctl.send(control.encode(msg))

    async def _expect(self, kind: type[M], timeout: float) -> M:
        """Wait for one control message of a type, answering queries; any message keeps us alive, 'stop'
        ends the worker, and frames that are not control messages are ignored."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        missing = f"no '{control.kind(kind)}' from the coordinator in {timeout:g} s"
        while True:
            left = min(deadline - loop.time(), self.heartbeat_timeout)
            if left <= 0:
                raise CoordinatorLost(missing)
            try:
                msg = control.decode(await asyncio.wait_for(self.ctl.recv(), left))
            except TimeoutError:
                raise CoordinatorLost(missing if loop.time() >= deadline else "the coordinator went silent") from None
            except WireError:
                continue
            if isinstance(msg, kind):
                return msg
            if isinstance(msg, control.Stop):
                raise Stopped()
            if isinstance(msg, control.Query):
                # Messages still in link queues land within their emulated delay: answer when they
                # have (or after a heartbeat), so draining is not a busy loop of query waves.
                await links_settled(self.endpoints.values(), self.heartbeat)
                await self._send(control.Counts(name=self.spec.name, wave=msg.wave, **self._totals()))

    def _beat(self) -> control.Heartbeat:
        """The heartbeat: traffic totals, and the progress of the nodes that changed since the last beat."""
        return control.Heartbeat(name=self.spec.name, progress=BOARD.drain(self.roles), **self._totals())

    def _totals(self) -> dict[str, int]:
        """Frame totals over this worker's nodes, as counts and heartbeats carry them (a lost message
        counts as received: it is no longer in flight)."""
        return self.traffic.as_dict()

    async def _serve(self) -> None:
        spec, cfg = self.spec, self.spec.config
        data_fp: dict[int, dict[str, str]] = {}
        data: dict[int, Any] = {}
        try:
            self.devices = place_nodes(cfg, spec.program, spec.ranks, spec.first_rank)
            hub = self.hub = Hub(self.ctx, int(cfg.net.max_message_mb * (1 << 20)), spec.key,
                                 native.chosen(cfg.net.native_io))
            hub.bind(spec.host, cfg.net.port_range)
            self.logs = open_logs(spec.run_dir, spec.ranks, spec.t0)
            self.messages = open_message_log(cfg, spec.run_dir, spec.name, spec.t0)
            for rank in spec.ranks:
                role = spec.program.role_of(rank, spec.graph)
                self.roles[rank] = role
                log = self.logs[rank]
                ep = self.endpoints[rank] = make_endpoint(hub, cfg, spec.graph, rank, log, spec.links, self.messages,
                                                         self.traffic)
                hub.attach(ep)
                log_start(log, role, ep, self.devices[rank])
                if spec.program.uses_data:
                    data[rank], data_fp[rank] = self._load_data(rank)
        except Exception as exc:
            failed = next((r for r in spec.ranks if r not in data and spec.program.uses_data), spec.ranks[0])
            await self._send(control.Failed(name=spec.name, rank=failed, reason=describe(exc), phase="setup"))
            await self._expect(control.Stop, self.start_timeout)
            return
        await self._send(control.Register(name=spec.name, pid=os.getpid(), ranks=spec.ranks,
                                          endpoints=dict.fromkeys(spec.ranks, self.hub.address),
                                          data=data_fp))
        peers = await self._expect(control.Peers, self.start_timeout)
        self.hub.connect(peers.run, peers.endpoints)
        for ep in self.endpoints.values():
            ep.connect(peers.run, self.endpoints)
        try:
            await asyncio.gather(*(ep.say_hello(self.start_timeout) for ep in self.endpoints.values()))
        except Exception as exc:
            await self._send(control.Failed(name=spec.name, rank=spec.ranks[0], reason=describe(exc),
                                            phase="connect"))
            await self._expect(control.Stop, self.start_timeout)
            return
        await self._send(control.Ready(name=spec.name))
        await self._expect(control.Start, self.start_timeout)
        loop = asyncio.get_running_loop()
        self.beats = Heartbeat(zmq.Context.shadow(self.ctx.underlying), spec.control, spec.name,
                               self.heartbeat, self._beat, spec.key)
        self.beats.start()
        # Everything built so far lives for the whole run: keep it out of the cyclic collector's
        # scans. With thousands of nodes per process each full collection walked millions of
        # long-lived objects, and the runs spent most of their time there. (The collector was off
        # while it was built: the collections of set-up walked it again and again.)
        gc.freeze()
        gc.enable()
        for rank in spec.ranks:
            node = build_node(spec.program, cfg, spec.graph, rank, self.endpoints[rank], self.logs[rank],
                              spec.run_dir, data.get(rank), self.devices[rank], len(spec.ranks), spec.conditions)
            self.tasks.append(loop.create_task(self._run_node(node)))
        await self._control_loop()

    def _load_data(self, rank: int) -> tuple[Any, dict[str, str]]:
        spec = self.spec
        return load_share(spec.config, spec.program, spec.graph, rank, self.devices[rank])

    async def _run_node(self, node: Node) -> None:
        outcome = await run_node(node, self.logs[node.rank], self.devices.get(node.rank, "cpu"))
        if outcome.failed:
            await self._send(control.Failed(name=self.spec.name, rank=node.rank, reason=outcome.reason, phase="run"))
        else:
            await self._send(control.Done(name=self.spec.name, rank=node.rank, result=outcome.result,
                                          device=outcome.device, peak_memory_mb=outcome.peak_memory_mb))

    async def _control_loop(self) -> None:
        """Answer queries until told to stop."""
        await self._expect(control.Stop, float("inf"))

    async def _report_final(self) -> None:
        """The last message of every clean exit: each node's traffic. The coordinator counts on it: a
        worker that exited with code 0 has sent it."""
        for task in self.tasks:
            task.cancel()
        nodes = {}
        for rank, ep in self.endpoints.items():
            ep.discard_queued("the run stopped with the message in its link queue")
            stats = log_traffic(self.logs[rank], ep)
            nodes[rank] = {"role": self.roles[rank], "host": self.spec.host, **stats}
        await self._send(control.Final(name=self.spec.name, nodes=nodes))


class Heartbeat(threading.Thread):
    """Beats from its own thread and socket: a node whose computation holds the GIL or the event loop
    for a while is slow, not dead, and must not be reported as silent. A dead process stops beating."""

    def __init__(self, ctx: zmq.Context, address: str, name: str, interval: float,
                 message: Callable[[], control.Heartbeat], key: secure.RunKey | None = None) -> None:
        super().__init__(name=f"dsim-heartbeat-{name}", daemon=True)
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, f"{name}/hb".encode())
        self.sock.setsockopt(zmq.LINGER, 0)
        secure.dial(self.sock, key)
        self.sock.connect(address)
        self.interval, self.message = interval, message
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            try:
                self.sock.send(control.encode(self.message()), flags=zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # the coordinator is gone or slow: its own timeouts decide
        self.sock.close(linger=0)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)


def _libc() -> ctypes.CDLL | None:
    """The C library, for the Linux and glibc calls below (None elsewhere: they are then skipped)."""
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None


def _die_with_parent(libc: ctypes.CDLL | None) -> None:
    """Ask Linux to kill this worker if its launcher dies, so no process is ever left behind."""
    if libc is not None:
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
_HEAP_UP_TO = 32 << 20  # glibc's largest mmap threshold (DEFAULT_MMAP_THRESHOLD_MAX on 64 bits)
_TRIM_ABOVE = 64 << 20


def _reuse_freed_memory(libc: ctypes.CDLL | None) -> None:
    """Let glibc's malloc reuse the memory of freed messages instead of mapping fresh pages each time.

    By default a block of 128 KB or more is its own mmap, and freeing it unmaps it: every large message
    ZeroMQ copies or receives then faults in a fresh page per 4 KB (about 240 faults per 1 MB message,
    half the CPU of a 1 MB exchange). Blocks up to 32 MB come from the heap instead, and up to 64 MB
    of freed memory stays there for the next message. Without glibc's mallopt this is a no-op."""
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is not None:
        mallopt(_M_MMAP_THRESHOLD, _HEAP_UP_TO)
        mallopt(_M_TRIM_THRESHOLD, _TRIM_ABOVE)


def run_event_loop(main: Coroutine[Any, Any, int], choice: str) -> int:
    """Run a worker's event loop: uvloop when chosen, or on "auto" when installed, else asyncio.

    Every message costs a few loop turns, and uvloop's turns are cheaper: about a quarter less CPU
    per message in the lock-step benchmark (benchmarks/bench_runtime.py runs both).
    """
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise
        else:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(main)
    return asyncio.run(main)


def _schedule(policy: str) -> None:
    """Put this process, and every thread it starts later (ZeroMQ's, torch's), in its CPU scheduling
    class. SCHED_BATCH only gives up wake-up preemption, so a worker that a message wakes waits for the
    running one's time slice and then finds more messages queued: fewer wake-ups per message, the cost
    that dominates small messages when processes outnumber cores. A system that refuses the call
    (a seccomp filter) or lacks it (not Linux) keeps the default class: the run is the same, only slower."""
    if policy == "batch" and hasattr(os, "SCHED_BATCH"):
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))


def run_worker(spec: WorkerSpec) -> None:
    """Entry point of a forked worker process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the launcher handles Ctrl-C and stops us cleanly
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    gc.disable()  # until the nodes start (Worker._serve): set-up builds what lives for the whole run
    libc = _libc()
    _die_with_parent(libc)
    _reuse_freed_memory(libc)
    _schedule(spec.config.net.scheduler)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(spec.threads)
    code = run_event_loop(Worker(spec).run(), spec.config.net.event_loop)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
