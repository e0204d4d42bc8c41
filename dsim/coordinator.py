"""The coordinator: start-up handshake and barrier, supervision, termination, and the run's outcome.

It lives in the launcher process of machine 0 and talks to every worker process (and to the launchers
of the other machines) over one ROUTER socket. Every phase has a deadline; a node that fails, a worker
process that dies, or one that stops sending heartbeats ends the run with that node named.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq
import zmq.asyncio

from dsim import wire
from dsim.config import differences, fingerprint_view
from dsim.console import Console, fmt_bytes
from dsim.plan import LocalProc, WorkerPlan, format_ranks


class Abort(Exception):
    """Ends the run: carries the reason, the ranks to blame, and whether it was a refusal to start."""

    def __init__(self, reason: str, ranks: list[int] | None = None, status: str = "failed") -> None:
        super().__init__(reason)
        self.reason, self.ranks, self.status = reason, ranks or [], status


@dataclass
class Outcome:
    status: str = "ok"
    failures: list[dict[str, Any]] = field(default_factory=list)
    results: dict[int, dict[str, Any]] = field(default_factory=dict)
    traffic: dict[int, dict[str, Any]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    data_fingerprint: str = ""


class Coordinator:
    def __init__(
        self,
        cfg: dict[str, Any],
        graph_hash: str,
        run_id: str,
        binds: list[str],
        plans: list[WorkerPlan],
        machines: int,
        local: list[LocalProc],
        console: Console,
    ) -> None:
        self.cfg, self.graph_hash, self.run_id = cfg, graph_hash, run_id
        self.binds, self.local, self.console = binds, local, console
        self.plans = {p.name: p for p in plans}
        self.world = sorted(r for p in plans for r in p.ranks)
        self.remote_machines = set(range(1, machines))
        net = cfg.net
        self.heartbeat, self.heartbeat_timeout = net.heartbeat, net.heartbeat_timeout
        self.start_timeout, self.timeout = net.start_timeout, cfg.timeout
        self.outcome = Outcome()
        self.launchers: dict[int, bytes] = {}
        self.identities: dict[str, bytes] = {}
        self.registered: dict[str, dict[str, Any]] = {}
        self.ready: set[str] = set()
        self.done: set[int] = set()
        self.last_seen: dict[str, float] = {}
        self.counts: dict[str, dict[str, int]] = {}
        self.finals: dict[str, dict[str, Any]] = {}
        self.waves: dict[str, dict[str, Any]] = {}
        self.exited: set[str] = set()
        self._interrupted = False
        self._last_tick = 0.0

    # --- plumbing -----------------------------------------------------------------------------
    def interrupt(self) -> None:
        self._interrupted = True

    async def _send(self, identity: bytes, msg: dict[str, Any]) -> None:
        try:
            self.sync_sock.send_multipart([identity, wire.pack_control(msg)], flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # a peer that is gone or not yet connected: supervision reports it

    async def _to_workers(self, msg: dict[str, Any]) -> None:
        for identity in list(self.identities.values()):
            await self._send(identity, msg)

    async def _to_all(self, msg: dict[str, Any]) -> None:
        await self._to_workers(msg)
        for identity in list(self.launchers.values()):
            await self._send(identity, msg)

    async def _pump(self, until: Callable[[], bool], timeout: float, waiting_for: Callable[[], str],
                    supervise: bool = True) -> None:
        """Handle messages until `until()` holds; raise Abort when the deadline passes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not until():
            now = loop.time()
            if now >= deadline:
                raise Abort(f"timed out after {timeout:g} s waiting for {waiting_for()}")
            if supervise:
                self._supervise()
            if now - self._last_tick >= self.heartbeat:
                self._last_tick = now
                await self._to_all({"t": "tick"})
                self._progress()
            try:
                frames = await asyncio.wait_for(self.sock.recv_multipart(),
                                                 min(self.heartbeat, deadline - now))
            except TimeoutError:
                continue
            if len(frames) != 2:
                continue
            try:
                msg = wire.unpack_control(frames[1])
            except wire.WireError:
                continue
            await self._handle(frames[0], msg)

    def _supervise(self) -> None:
        if self._interrupted:
            raise Abort("interrupted by the user (Ctrl-C)", status="interrupted")
        for proc in self.local:
            code = proc.process.exitcode
            if code is not None and proc.name not in self.finals and proc.name not in self.exited:
                self.exited.add(proc.name)
                raise Abort(f"{format_ranks(proc.ranks)} (pid {proc.process.pid}) died: {exit_reason(code)}",
                            proc.ranks)
        now = time.monotonic()
        for name, seen in self.last_seen.items():
            if name not in self.finals and now - seen > self.heartbeat_timeout:
                ranks = self.plans[name].ranks
                raise Abort(f"{format_ranks(ranks)} stopped answering (no heartbeat for "
                            f"{self.heartbeat_timeout:g} s)", ranks)

    def _progress(self) -> None:
        if self.started is None:
            self.console.status(f"starting: {len(self.registered)}/{len(self.plans)} workers registered, "
                                f"{len(self.ready)} ready")
            return
        sent = sum(c.get("bytes_sent", 0) for c in self.counts.values())
        self.console.status(f"running {time.monotonic() - self.started:6.1f} s | nodes done "
                            f"{len(self.done)}/{len(self.world)} | sent {fmt_bytes(sent)}")

    async def _handle(self, identity: bytes, msg: dict[str, Any]) -> None:
        kind = msg["t"]
        name = msg.get("name", "")
        if name in self.plans:
            if kind != "hb":  # heartbeats come from a side socket; replies go to the main one
                self.identities.setdefault(name, identity)
            if self.started is not None:
                self.last_seen[name] = time.monotonic()
        if kind == "machine":
            await self._check_machine(identity, msg)
        elif kind == "register" and name in self.plans:
            self.registered[name] = msg
        elif kind == "ready":
            self.ready.add(name)
        elif kind == "hb":
            self.counts[name] = msg
        elif kind == "done":
            rank = int(msg["rank"])
            self.done.add(rank)
            self.outcome.results[rank] = msg.get("result") or {}
        elif kind == "failed":
            rank = int(msg["rank"])
            raise Abort(f"node {rank} failed: {msg.get('reason', 'no reason given')}", [rank])
        elif kind == "counts":
            self.waves[name] = msg
        elif kind == "final":
            self.finals[name] = msg.get("nodes", {})
        elif kind == "proc_exit":
            ranks = [int(r) for r in msg["ranks"]]
            raise Abort(f"{format_ranks(ranks)} (pid {msg['pid']} on machine {msg['machine']}) died: "
                        f"{exit_reason(int(msg['code']))}", ranks)
        elif kind == "lost":
            raise Abort(f"machine {msg.get('machine')}: {msg.get('reason')}")

    async def _check_machine(self, identity: bytes, msg: dict[str, Any]) -> None:
        machine = int(msg.get("machine", -1))
        if machine not in self.remote_machines:
            await self._send(identity, {"t": "refuse", "reason": f"unexpected machine rank {machine}"})
            return
        diffs = differences(fingerprint_view(self.cfg), msg.get("config", {}))
        if msg.get("graph") != self.graph_hash:
            diffs.append("the graph (topology files or builders differ)")
        if diffs:
            reason = f"machine {machine} resolved a different config: " + "; ".join(diffs[:6])
            await self._send(identity, {"t": "refuse", "reason": reason})
            raise Abort(reason, status="refused")
        self.launchers[machine] = identity
        await self._send(identity, {"t": "accept", "run": self.run_id})

    # --- phases -------------------------------------------------------------------------------
    async def run(self) -> Outcome:
        self.started: float | None = None
        t0 = time.monotonic()
        self.ctx = zmq.asyncio.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.sync_sock = zmq.Socket.shadow(self.sock.underlying)  # sends that never wait
        for bind in self.binds:
            self.sock.bind(bind)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, self.interrupt)
        try:
            await self._startup()
            self.outcome.timings["startup_s"] = time.monotonic() - t0
            self.started = time.monotonic()
            await self._pump(lambda: len(self.done) == len(self.world), float("inf"), lambda: "nodes")
            self.outcome.timings["run_s"] = time.monotonic() - self.started
            await self._drain()
            await self._stop("finished")
        except Abort as exc:
            self.outcome.status = exc.status
            self.outcome.failures.append({"ranks": exc.ranks, "reason": exc.reason})
            await self._stop(exc.reason)
        finally:
            loop.remove_signal_handler(signal.SIGINT)
            self.console.clear()
        self.outcome.timings["wall_s"] = time.monotonic() - t0
        self.outcome.traffic = {int(r): s for nodes in self.finals.values() for r, s in nodes.items()}
        return self.outcome

    async def close(self, summary: dict[str, Any]) -> None:
        for identity in self.launchers.values():
            await self._send(identity, {"t": "end", "summary": summary})
        self.sock.close(linger=1000)
        self.ctx.term()

    async def _startup(self) -> None:
        total = len(self.plans)
        await self._pump(
            lambda: len(self.registered) == total and len(self.launchers) == len(self.remote_machines),
            self.start_timeout,
            lambda: "registration of " + ", ".join(
                [format_ranks(p.ranks) for n, p in self.plans.items() if n not in self.registered]
                + [f"machine {m}" for m in sorted(self.remote_machines - set(self.launchers))]),
        )
        self._check_data()
        endpoints = {r: a for msg in self.registered.values() for r, a in msg["endpoints"].items()}
        await self._to_workers({"t": "peers", "run": self.run_id, "endpoints": endpoints})
        await self._pump(lambda: len(self.ready) == total, self.start_timeout,
                         lambda: "links of " + ", ".join(format_ranks(p.ranks) for n, p in self.plans.items()
                                                          if n not in self.ready))
        now = time.monotonic()
        self.last_seen = {name: now for name in self.plans}
        await self._to_workers({"t": "start"})

    def _check_data(self) -> None:
        groups: dict[str, list[int]] = {}
        for msg in self.registered.values():
            for rank, fps in msg.get("data", {}).items():
                groups.setdefault(fps["data"], []).append(int(rank))
        if len(groups) > 1:
            (fp_a, ranks_a), (fp_b, ranks_b) = sorted(groups.items(), key=lambda kv: -len(kv[1]))[:2]
            raise Abort(f"{format_ranks(sorted(ranks_b))} computed data fingerprint {fp_b[:12]} but "
                        f"{format_ranks(sorted(ranks_a))} computed {fp_a[:12]}: their dataset files or data "
                        f"settings differ", sorted(ranks_b), status="refused")
        self.outcome.data_fingerprint = next(iter(groups), "")

    async def _drain(self) -> None:
        """Counting termination: two identical waves with all sent bytes received mean nothing in flight."""
        previous: tuple[int, ...] | None = None
        deadline = time.monotonic() + self.timeout
        for wave in range(1, 1_000_000):
            self.waves = {}
            await self._to_workers({"t": "query", "wave": wave})
            await self._pump(lambda w=wave: len(self.waves) == len(self.plans)
                             and all(m["wave"] == w for m in self.waves.values()),
                             self.timeout, lambda: "traffic counts")
            totals = tuple(sum(m[k] for m in self.waves.values())
                           for k in ("bytes_sent", "bytes_recv", "msgs_sent", "msgs_recv"))
            if totals[0] == totals[1] and totals[2] == totals[3] and totals == previous:
                return
            previous = totals
            if time.monotonic() > deadline:
                self.outcome.warnings.append(
                    f"{totals[0] - totals[1]} bytes still in flight when the run stopped")
                return

    async def _stop(self, reason: str) -> None:
        """Tell everyone to stop and collect the final traffic of every worker that is still alive."""
        await self._to_all({"t": "stop", "reason": reason})

        def alive_missing() -> list[str]:
            local = {p.name: p for p in self.local}
            # A worker that exited cleanly sent its final report before exiting: wait for it.
            return [n for n in self.identities if n not in self.finals
                    and not (n in local and local[n].process.exitcode not in (None, 0))]

        try:
            await self._pump(lambda: not alive_missing(), min(10.0, self.heartbeat_timeout),
                             lambda: "final reports", supervise=False)
        except Abort as exc:
            self.outcome.warnings.append(f"{exc.reason} from {', '.join(alive_missing())}")


def exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"
