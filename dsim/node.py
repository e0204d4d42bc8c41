"""The node-program API: a role is a subclass of `Node` with `async def run(self)`.

A role sees its own rank and role, its neighbours, the graph and the config, and talks with
`send` / `recv` / `broadcast` / `gather`. Sends to non-neighbours are relayed along shortest paths by
the runtime. Long computations go through `offload` so that the node keeps answering (and relaying)
while it trains. Constructors do no work: the runtime builds every node, connects it, and only then
calls `run`.
"""

from __future__ import annotations

import asyncio
import functools
import os
import sys
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import networkx as nx
import numpy as np

from dsim.nodelog import NodeLog
from dsim.progress import BOARD
from dsim.transport import Endpoint, Message, NodeTimeout

if TYPE_CHECKING:
    from dsim.config import Config

T = TypeVar("T")


@dataclass
class NodeContext:
    """What the runtime hands a node: identity, graph, config, sockets, log, and its data (if any)."""

    rank: int
    role: str
    graph: nx.Graph
    config: Config
    endpoint: Endpoint
    log: NodeLog
    options: Any  # the program's typed option table (a dsim.options.Options), or None
    run_dir: Path
    data: Any = None
    device: str = "cpu"  # where this node's models and tensors live (chosen by the worker after fork)
    process_nodes: int = 1  # nodes hosted by this node's process (torch's thread pool is per process)
    slowdown: float = 1.0  # straggler factor: offloaded computations take this many times as long


class Node:
    """Base class of every role. Override `run`; return a dict of results (or None)."""

    role: ClassVar[str] = "node"

    def __init__(self, ctx: NodeContext) -> None:
        self._ctx = ctx

    # --- identity and surroundings -------------------------------------------------------------
    @property
    def rank(self) -> int:
        return self._ctx.rank

    @property
    def neighbours(self) -> tuple[int, ...]:
        return self._ctx.endpoint.neighbours

    @property
    def graph(self) -> nx.Graph:
        return self._ctx.graph

    @property
    def server(self) -> int | None:
        """Rank of the server node, or None in a fully decentralized program."""
        return self._ctx.graph.graph.get("server")

    @property
    def clients(self) -> list[int]:
        """Every rank except the server's."""
        return [r for r in sorted(self._ctx.graph.nodes) if r != self.server]

    @property
    def config(self) -> Config:
        """The whole resolved config (typed: `self.config.seed`, `self.config.net.heartbeat`...)."""
        return self._ctx.config

    @property
    def options(self) -> Any:
        """This program's own typed table, e.g. config.gossip: `self.options.dim`."""
        return self._ctx.options

    @property
    def data(self) -> Any:
        """This node's share of the dataset (dsim.data.NodeData), or None for programs without data."""
        return self._ctx.data

    @property
    def device(self) -> str:
        """The torch device of this node ("cpu", "cuda:1", ...): its data share already lives there;
        models it builds and arrays it receives go there too (`tensor.to(self.device)`)."""
        return self._ctx.device

    @property
    def run_dir(self) -> Path:
        """The run directory (on this node's machine), for artefacts such as a synthetic set."""
        return self._ctx.run_dir

    @functools.cached_property
    def rng(self) -> np.random.Generator:
        """A generator seeded by (seed, rank): reproducible and different on every node."""
        return np.random.default_rng([self._ctx.config.seed, self.rank])

    @property
    def timeout(self) -> float:
        return self._ctx.config.timeout

    # --- messaging -----------------------------------------------------------------------------
    # send and recv hand back the endpoint's coroutine itself (await them as usual): a wrapping
    # coroutine of their own would cost every message another frame.
    def send(self, dst: int, kind: str, payload: Any = None) -> Coroutine[Any, Any, int]:
        """Send to any node; non-neighbours are reached hop by hop. Returns the bytes sent."""
        ctx = self._ctx
        return ctx.endpoint.send(dst, kind, payload, ctx.config.timeout)

    def recv(self, kind: str, src: int | None = None, timeout: float | None = None) -> Coroutine[Any, Any, Message]:
        """Wait for the next `kind` message (from `src` if given); raises NodeTimeout after `timeout` s."""
        ctx = self._ctx
        return ctx.endpoint.mailbox.get(kind, src, timeout or ctx.config.timeout, self._who)

    def _who(self) -> str:
        return f"node {self.rank} ({self._ctx.role})"

    async def broadcast(self, kind: str, payload: Any = None, dsts: Iterable[int] | None = None) -> int:
        """Send the same payload to `dsts` (default: the neighbours). Returns the bytes sent.

        One send after the other, not a task each: a send returns at once unless its socket is full."""
        total = 0
        for dst in self.neighbours if dsts is None else dsts:
            total += await self.send(dst, kind, payload)
        return total

    async def gather(
        self,
        kind: str,
        srcs: Iterable[int] | None = None,
        timeout: float | None = None,
        allow_missing: bool = False,
        progress: str | None = None,
    ) -> dict[int, Any]:
        """Collect one `kind` payload from each of `srcs` (default: the neighbours).

        With allow_missing, sources silent past the timeout are left out and logged instead of failing.
        With `progress`, the wait is shown as that phase, its steps the sources heard from so far.
        """
        messages = await self.gather_messages(kind, srcs, timeout, allow_missing, progress)
        return {src: msg.payload for src, msg in messages.items()}

    async def gather_messages(
        self,
        kind: str,
        srcs: Iterable[int] | None = None,
        timeout: float | None = None,
        allow_missing: bool = False,
        progress: str | None = None,
    ) -> dict[int, Message]:
        """Like `gather`, keeping each whole Message (source, size in bytes, payload)."""
        sources = list(self.neighbours if srcs is None else srcs)
        wait = timeout or self.timeout
        deadline = asyncio.get_running_loop().time() + wait
        pending, out = set(sources), {}
        if progress is not None:
            self.progress(progress, 0, len(sources))
        while pending and (msg := await self._next_from(kind, pending, deadline)) is not None:
            pending.discard(msg.src)
            out[msg.src] = msg
            if progress is not None:
                self.progress(progress, len(out), len(sources))
        missing = [src for src in sources if src in pending]
        if missing and not allow_missing:
            raise NodeTimeout(f"{self._who()} waited {wait:g} s for '{kind}' from node {missing[0]}")
        for src in missing:
            self.log_event("missing", kind=kind, src=src)
        return {src: out[src] for src in sources if src in out}

    async def gather_round(
        self,
        kind: str,
        rnd: int,
        srcs: Iterable[int] | None = None,
        timeout: float | None = None,
    ) -> dict[int, Any]:
        """This round's `kind` payload (a dict with a "round" key) from each of `srcs` that sends it in
        time (default: the neighbours); the others are left out and logged as `missing`.

        For round-based programs on links that lose messages or nodes that go offline: a payload of
        an earlier round (late) is dropped and logged `stale`; one of a later round means, links being
        FIFO, that this round's will not come, so it is kept for that round and the source counts as
        missing now. The whole gather shares one deadline."""
        deadline = asyncio.get_running_loop().time() + (timeout or self.timeout)
        early = self.__dict__.setdefault("_early", {})
        sources = list(self.neighbours if srcs is None else srcs)
        got, pending = {}, set()
        for src in sources:
            held = early.get((kind, src), [])
            while held and held[0]["round"] < rnd:
                held.pop(0)  # kept for a round this node has since given up on
            if not held:
                pending.add(src)
            elif held[0]["round"] == rnd:
                got[src] = held.pop(0)
        while pending and (msg := await self._next_from(kind, pending, deadline)) is not None:
            payload = msg.payload
            if payload["round"] < rnd:
                self.log_event("stale", kind=kind, src=msg.src, round=payload["round"], expected=rnd)
                continue
            pending.discard(msg.src)
            if payload["round"] == rnd:
                got[msg.src] = payload
            else:
                early.setdefault((kind, msg.src), []).append(payload)
        for src in sources:
            if src not in got:
                self.log_event("missing", kind=kind, src=src, round=rnd)
        return {src: got[src] for src in sources if src in got}

    async def _next_from(self, kind: str, pending: set[int], deadline: float) -> Message | None:
        """The next `kind` message from any of `pending`, or None once the deadline has passed: the
        gathers wait on one mailbox entry, not a task per source (thousands of nodes gather at once)."""
        mailbox = self._ctx.endpoint.mailbox
        want = next(iter(pending)) if len(pending) == 1 else frozenset(pending)
        msg = mailbox.take(kind, want)
        if msg is not None:
            return msg
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            return None
        try:
            return await mailbox.get(kind, want, left, self._who)
        except NodeTimeout:
            return None

    # --- computation and logging ---------------------------------------------------------------
    async def offload(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a long computation in a thread so the node keeps messaging (torch releases the GIL).

        A straggler (`[stragglers]`) then waits out (slowdown - 1) x the time it took: its compute is
        that much slower as seen by everything else, while it keeps relaying and answering."""
        start = time.perf_counter()
        result = await asyncio.to_thread(fn, *args, **kwargs)
        if self._ctx.slowdown > 1:
            await asyncio.sleep((self._ctx.slowdown - 1) * (time.perf_counter() - start))
        return result

    def use_all_cores(self) -> None:
        """Let torch use every core of the machine from now on, when no other node shares this process.

        torch's thread count is process-wide: raising it for one of several packed nodes would change
        the threads of the others, so it is left alone then."""
        if self._ctx.process_nodes == 1 and "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(os.cpu_count() or 1)

    def elapsed(self) -> float:
        """Seconds since the run was launched, on the clock of the node's log (every event's "t"):
        what results carry so that accuracy can be plotted against time."""
        return round(time.time() - self._ctx.log.t0, 4)

    def progress(self, phase: str, step: int = 0, total: int = 0) -> None:
        """Say what this node is doing: `step` of `total` steps of `phase` done (no steps: total 0).

        The launcher shows it live, per node or aggregated. It only records the latest value, so it
        may be called every step, from `run` or from an offloaded computation's thread."""
        BOARD.record(self.rank, phase, step, total)

    def log(self, **metrics: Any) -> None:
        """Record metrics (e.g. round=3, loss=0.2) in this node's jsonl log."""
        self._ctx.log.write("metric", **metrics)

    def log_event(self, event: str, **fields: Any) -> None:
        self._ctx.log.write(event, **fields)

    async def run(self) -> dict[str, Any] | None:  # pragma: no cover - abstract
        raise NotImplementedError
