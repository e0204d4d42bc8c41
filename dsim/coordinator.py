"""The coordinator's socket loop: start-up handshake and barrier, supervision, termination, the outcome.

It lives in the launcher process of machine 0 and talks to every worker process (and to the launchers
of the other machines) over one ROUTER socket. What to do with each message and moment is decided by
`dsim.supervision.CoordinatorState`; this loop only feeds it and sends what it answers. Every phase has a
deadline; a node that fails, a worker process that dies, or one that stops sending heartbeats ends the
run with that node named. With a run key its ROUTER is a CURVE server (dsim.secure): a connection
without the key reaches nothing, and is counted (`refused`).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import zmq
import zmq.asyncio

from dsim import control, secure
from dsim.config import Config, fingerprint_view
from dsim.console import Console
from dsim.plan import LocalProc, WorkerPlan
from dsim.supervision import Abort, CoordinatorState, Outcome, Send
from dsim.wire import WireError

__all__ = ["Abort", "Coordinator", "Outcome"]

# Ctrl-C, and the SIGTERM that Slurm, `timeout` and `kill` send: either stops the run as interrupted,
# with its summary written, instead of killing the launcher and losing what the nodes reported.
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Coordinator:
    """The socket loop around a `CoordinatorState`: receive, decode, hand over, send its answers, tick."""

    def __init__(
        self,
        cfg: Config,
        graph_hash: str,
        run_id: str,
        binds: list[str],
        plans: list[WorkerPlan],
        machines: int,
        local: list[LocalProc],
        console: Console,
        key: secure.RunKey | None = None,
        pressed: list[int] | None = None,
    ) -> None:
        """`pressed`: the Ctrl-C presses the launcher held while it forked; the loop takes them over."""
        self.run_id, self.binds, self.local, self.console, self.key = run_id, binds, local, console, key
        self._pressed = pressed if pressed is not None else []
        self.refused: Counter[str] = Counter()  # connections that failed the CURVE handshake, by reason
        net = cfg.net
        self.heartbeat = net.heartbeat
        self.state = CoordinatorState(
            plans, machines=machines, run_id=run_id, config=fingerprint_view(cfg), graph_hash=graph_hash,
            local={p.name: p.process.pid for p in local}, start_timeout=net.start_timeout,
            timeout=cfg.timeout, heartbeat_timeout=net.heartbeat_timeout)
        self._interrupted = False
        self._last_tick = -float("inf")
        self._recv: asyncio.Future | None = None
        self._wake = asyncio.Event()

    def interrupt(self) -> None:
        self._interrupted = True
        self._wake.set()

    async def run(self) -> Outcome:
        self.ctx = zmq.asyncio.Context()
        self.gate = secure.Gate(self.ctx, self.key)
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        secure.serve(self.sock, self.key)
        self.watch = secure.HandshakeWatch(self.sock, self.key)
        self.sync_sock = zmq.Socket.shadow(self.sock.underlying)  # sends that never wait
        for bind in self.binds:
            self.sock.bind(bind)
        loop = asyncio.get_running_loop()
        self.watch.start(loop, self._refuse)
        for sig in _STOP_SIGNALS:
            loop.add_signal_handler(sig, self.interrupt)
        if self._pressed:  # pressed before this handler existed: this run is interrupted all the same
            self._pressed.clear()
            self.interrupt()
        for proc in self.local:
            loop.add_reader(proc.process.sentinel, self._on_exit, loop, proc)
        try:
            self.state.begin(time.monotonic())
            while not self.state.finished:
                await self._turn()
        finally:
            for sig in _STOP_SIGNALS:
                loop.remove_signal_handler(sig)
            for proc in self.local:
                loop.remove_reader(proc.process.sentinel)
            if self._recv is not None:
                self._recv.cancel()
            self.console.clear()
        return self.state.outcome

    async def close(self, summary: dict[str, Any]) -> None:
        self._deliver(self.state.end(summary))
        self.watch.close()
        self.sock.close(linger=1000)
        self.gate.stop()
        self.ctx.term()

    async def _turn(self) -> None:
        """One turn: the time and the exits go to the state, a tick when due, then at most one message."""
        now = time.monotonic()
        self._wake.clear()
        exits = {p.name: p.process.exitcode for p in self.local if p.process.exitcode is not None}
        self._apply(self.state.check, now, exits, self._interrupted)
        if self.state.finished:
            return
        if now - self._last_tick >= self.heartbeat:
            self._last_tick = now
            self._deliver(self.state.tick())
            self.console.status(lambda: self.state.progress(now))
        frames = await self._receive(min(self.heartbeat, self.state.due(now)))
        if frames is None or len(frames) != 2:
            return
        try:
            msg = control.decode(frames[1])
        except WireError:
            return  # not ours: ignored
        self._apply(self.state.on_message, frames[0], msg, time.monotonic())

    def _apply(self, handler: Callable[..., list[Send]], *args: Any) -> None:
        """Call the state; when it aborts the run, let it stop everyone instead. Send what it answers."""
        try:
            sends = handler(*args)
        except Abort as exc:
            sends = self.state.fail(exc, time.monotonic())
        self._deliver(sends)

    def _deliver(self, sends: list[Send]) -> None:
        for identity, msg in sends:
            try:
                self.sync_sock.send_multipart([identity, control.encode(msg)], flags=zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # a peer that is gone or not yet connected: supervision reports it

    async def _receive(self, timeout: float) -> list[bytes] | None:
        """The next message's frames, or None when the timeout passes or a local worker exits first."""
        if self._recv is None:
            self._recv = asyncio.ensure_future(self.sock.recv_multipart())
        woken = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait((self._recv, woken), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
        if not self._recv.done():
            return None
        received, self._recv = self._recv, None
        return received.result()

    def _refuse(self, reason: str) -> None:
        self.refused[reason] += 1

    def _on_exit(self, loop: asyncio.AbstractEventLoop, proc: LocalProc) -> None:
        """A worker's sentinel became readable: wake the loop once its exit code can be read."""
        if proc.process.exitcode is not None:  # the sentinel fires a moment before the exit status is ready
            loop.remove_reader(proc.process.sentinel)
            self._wake.set()
