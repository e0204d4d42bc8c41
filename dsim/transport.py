"""One node's network endpoint: its accounting, checks, mailbox and emulated links.

Neighbours in other processes are reached through the process's hub (dsim.hub: one ROUTER per process,
one DEALER per peer process); neighbours hosted by the same process are delivered in memory: the same
encoded frames, copied as a socket would copy them, handed to the receiver's loop in send order. The
accounting and checks are the same either way; only ZeroMQ's pipes and wake-ups are skipped.

Messages to a node that is not a neighbour go to the next hop of a shortest path and are forwarded
unchanged (frames untouched) by every relay, which counts the bytes it forwards. Every frame is counted
where it is sent and where it is received, so with no failures the totals agree. Frames that are garbled,
too large, from another run or from a non-neighbour are dropped, logged, and counted as dropped.

Emulated links (dsim.links, the [links] table): when any link of a node is not ideal, each message it
sends or forwards is admitted to the directed link to its next hop (serialisation behind the messages
before it, latency, jitter, loss) and waits in that link's queue, in arrival order, until a loop timer
hands its frames to the socket or to the in-memory receiver at its arrival time; `send` returns at
once. A message in a link queue is counted sent and not yet received, so termination counting sees it
in flight. A lost message is counted (msgs_lost, bytes_lost) and logged (`lost`) by the link's sender,
and counts as settled in `Counters.balance`. What still waits when the run stops is counted lost with
that reason (`discard_queued`), never dropped silently. With every link ideal the endpoint has no link
state (`_links is None`): one attribute check on the send, relay and receive paths is all it costs.
A node going offline (churn) is one more check at the two doors of the link layer, `_shape` (what it
sends or forwards) and `_handle` (what reaches it), counting those messages lost.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import zmq

from dsim import wire
from dsim.churn import Schedule
from dsim.hub import Hub, Outlet, addressed, hop_frame
from dsim.links import Link, LinkSpec, LinkTable
from dsim.routing import Routes

ZERO_COPY_FROM = 1 << 16  # a message this large waits in its link queue as zmq frames, sent without a copy
SOON_S = 50e-6  # a link head due sooner than this is checked on the next loop turn, not by a timer
# Loop timers have millisecond resolution (uvloop rounds to whole ms and can fire up to ~1 ms early):
# a shorter one fires at once and the early pump would spin. Waits of SOON_S-1 ms may end late by < 1 ms.
TIMER_FLOOR_S = 1e-3
_clock = time.monotonic  # the link model's clock: system-wide, so two processes' timestamps compare


# A message log's row: (node that logs, event, original sender, final receiver, kind, bytes).
Trace = Callable[[int, str, int, int, str, int], None]


class NodeTimeout(TimeoutError):
    """A wait inside a node program ran past its timeout; the message names who waited for what."""


class MessageTooLarge(ValueError):
    """A node tried to send more than net.max_message_mb in one message."""


class Message(NamedTuple):
    """A received message (a named tuple: built for every message, a frozen dataclass costs 3x more)."""

    src: int
    kind: str
    payload: Any
    nbytes: int


_new_message = tuple.__new__  # Message's own __new__ is a Python function: twice the cost on every message


@dataclass(slots=True)
class Traffic:
    bytes_sent: int = 0
    bytes_recv: int = 0
    msgs_sent: int = 0
    msgs_recv: int = 0

    def add_sent(self, nbytes: int) -> None:
        self.bytes_sent += nbytes
        self.msgs_sent += 1

    def add_received(self, nbytes: int) -> None:
        self.bytes_recv += nbytes
        self.msgs_recv += 1

    def as_dict(self) -> dict[str, int]:
        return {"bytes_sent": self.bytes_sent, "bytes_recv": self.bytes_recv,
                "msgs_sent": self.msgs_sent, "msgs_recv": self.msgs_recv}


@dataclass
class Counters:
    """Frame-level accounting for one node, in total and per message kind."""

    total: Traffic = field(default_factory=Traffic)
    by_kind: dict[str, Traffic] = field(default_factory=lambda: defaultdict(Traffic))
    bytes_relayed: int = 0
    msgs_relayed: int = 0
    msgs_dropped: int = 0
    bytes_dropped: int = 0
    msgs_lost: int = 0  # lost on this node's outgoing links, or still queued there when the run stopped
    bytes_lost: int = 0
    send_s: float = 0.0  # emulated serialisation time of everything this node put on its links (queueing excluded)
    recv_s: float = 0.0  # the same of everything it received, from the incoming link's rate
    latency_s: float = 0.0  # propagation latency (with jitter) of the messages it sent that were not lost
    # The sums over every node of the process, kept as they change (a lost message counted as received,
    # as in `balance`): heartbeats and termination counting read them in O(1), not O(nodes).
    process: Traffic = field(default_factory=Traffic)

    # Every message updates three Traffics, one call each (slotted, no tuple of them to loop over: this
    # runs cold on every wake-up of a process among many on few cores).
    def sent(self, kind: str, nbytes: int) -> None:
        self.total.add_sent(nbytes)
        self.by_kind[kind].add_sent(nbytes)
        self.process.add_sent(nbytes)

    def received(self, kind: str, nbytes: int) -> None:
        self.total.add_received(nbytes)
        self.by_kind[kind].add_received(nbytes)
        self.process.add_received(nbytes)

    def lost(self, nbytes: int) -> None:
        self.msgs_lost += 1
        self.bytes_lost += nbytes
        self.process.add_received(nbytes)

    def balance(self) -> dict[str, int]:
        """The totals termination counting compares (sent against received): a lost message has left
        the network as surely as a received one, so it counts on the receiving side."""
        t = self.total
        return {"bytes_sent": t.bytes_sent, "bytes_recv": t.bytes_recv + self.bytes_lost,
                "msgs_sent": t.msgs_sent, "msgs_recv": t.msgs_recv + self.msgs_lost}

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.total.as_dict(),
            "bytes_relayed": self.bytes_relayed,
            "msgs_relayed": self.msgs_relayed,
            "msgs_dropped": self.msgs_dropped,
            "bytes_dropped": self.bytes_dropped,
            "msgs_lost": self.msgs_lost,
            "bytes_lost": self.bytes_lost,
            "send_s": round(self.send_s, 6),
            "recv_s": round(self.recv_s, 6),
            "latency_s": round(self.latency_s, 6),
            "by_kind": {k: t.as_dict() for k, t in sorted(self.by_kind.items())},
        }


Source = int | frozenset[int] | None
"""Whom a wait is for: one node, any of a set of nodes (a gather's), or any node (None)."""


def _from(want: Source, src: int) -> bool:
    return want is None or want == src or (type(want) is frozenset and src in want)


def describe_source(want: Source) -> str:
    if want is None:
        return "any node"
    if type(want) is frozenset:
        return f"node {min(want)}" if len(want) == 1 else "nodes " + ", ".join(map(str, sorted(want)))
    return f"node {want}"


class Mailbox:
    """Received messages by kind, and the waiters for them, matched by kind and source (one node, any
    of a set, or any node).

    Waits time out through one loop timer per mailbox, armed for the earliest deadline and re-armed
    when it fires, not a timer per wait: a wait that is served (every message of a lock-step program)
    costs no timer at all, where arming and cancelling one was a tenth of a small message's path."""

    def __init__(self) -> None:
        self._queues: dict[str, deque[Message]] = defaultdict(deque)
        self._waiters: list[tuple[str, Source, asyncio.Future, float]] = []  # (kind, src, future, deadline)
        self._timer: asyncio.TimerHandle | None = None

    def put(self, msg: Message) -> None:
        for i, (kind, src, fut, _) in enumerate(self._waiters):
            if kind == msg.kind and (src == msg.src or _from(src, msg.src)) and not fut.done():
                del self._waiters[i]
                fut.set_result(msg)
                return
        self._queues[msg.kind].append(msg)

    def waiting(self) -> list[tuple[str, Source]]:
        """What the node's pending waits are for: (kind, source)."""
        return [(kind, src) for kind, src, _, _ in self._waiters]

    def take(self, kind: str, src: Source) -> Message | None:
        """The first queued `kind` message from `src`, if any (per source, messages come in send order)."""
        queue = self._queues.get(kind)
        if not queue:
            return None
        if src is None:
            return queue.popleft()
        for i, msg in enumerate(queue):
            if msg.src == src or _from(src, msg.src):
                del queue[i]
                return msg
        return None

    async def get(self, kind: str, src: Source, timeout: float, who: Callable[[], str]) -> Message:
        msg = self.take(kind, src)
        if msg is not None:
            return msg
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        deadline = loop.time() + timeout
        entry = (kind, src, fut, deadline)
        self._waiters.append(entry)
        timer = self._timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self._timer = loop.call_at(deadline, self._expire)
        try:
            return await fut  # `put` removed the waiter when it delivered
        except BaseException as exc:
            if entry in self._waiters:
                self._waiters.remove(entry)
            if isinstance(exc, _Expired):
                raise NodeTimeout(f"{who()} waited {timeout:g} s for '{kind}' from {describe_source(src)}") from None
            raise

    def _expire(self) -> None:
        """The timer: fail every wait past its deadline, then arm for the earliest one left (a timer
        that fires early fails nothing and re-arms)."""
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        left = []
        for entry in self._waiters:
            fut = entry[2]
            if entry[3] > now:
                left.append(entry)
            elif not fut.done():
                fut.set_exception(_Expired())
        self._waiters = left
        if left:
            self._timer = loop.call_at(min(entry[3] for entry in left), self._expire)

    def close(self) -> None:
        """Stop the timer (the waits, if any, are their tasks' to cancel)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class _Expired(Exception):
    """Internal: a mailbox wait's deadline passed before its message came."""


class Endpoint:
    """One node's side of the network; `connect` once the peers are known.

    Its process's `hub` carries what goes to other processes; without one (`hub=None`, as dsim.testing
    makes them) every neighbour must be reached in memory. `links` is the run's link table (None: every
    link ideal)."""

    def __init__(
        self,
        hub: Hub | None,
        rank: int,
        neighbours: tuple[int, ...],
        next_hop: Routes | Mapping[int, int],
        max_bytes: int,
        log: Callable[..., None],
        links: LinkTable | None = None,
        trace: Trace | None = None,
        process_totals: Traffic | None = None,
    ) -> None:
        self.hub, self.rank = hub, rank
        self.run = ""  # the run id arrives with the peer table
        self.neighbours = neighbours
        self._neighbour_set = frozenset(neighbours)
        self.next_hop = next_hop
        self.max_bytes = max_bytes
        self.log = log
        self._trace = trace  # the process's message log (MessageLog.record), None when it is off
        self.counters = Counters() if process_totals is None else Counters(process=process_totals)
        self.mailbox = Mailbox()
        self._inbound = wire.Inbound()  # decodes what neighbours send, cheaper for routes it has seen
        self.hello_from: set[int] = set()
        self._greeted: asyncio.Future | None = None  # only while say_hello waits (no Event kept per node)
        self._local: dict[int, Endpoint] = {}  # neighbours in this process, reached in memory
        self._loop: asyncio.AbstractEventLoop | None = None
        # Neighbours in other processes: the hub's way to each one's process, and the hop to each.
        self._outlets: dict[int, Outlet] = {}
        self._hop: dict[int, bytes] = {}
        self._open = False  # between connect and close: deliveries are handled
        self.address = "" if hub is None else hub.address
        # Emulated links: state of each outgoing link and the seconds per byte of each incoming one;
        # None when all of them are ideal, which keeps the hot paths as they are without links.
        self._links: dict[int, Link] | None = None
        self._cost_in: dict[int, float] = {}
        self.queued = 0  # messages waiting in this node's link queues (in flight)
        self._idle: asyncio.Event | None = None
        self._offline: Schedule | None = None  # churn: when this node is offline (None: never)
        self._t_start = 0.0
        if links is not None:
            out = {n: links.link(rank, n) for n in neighbours}
            cost_in = {n: links.spec(n, rank).cost for n in neighbours}
            if any(not link.spec.ideal for link in out.values()) or any(cost_in.values()):
                self._links, self._cost_in = out, cost_in

    def connect(self, run: str, local: Mapping[int, Endpoint] | None = None) -> None:
        """Open a link to every neighbour: in memory when its endpoint is in `local` (hosted by this
        process), else through the hub, which must be connected first; the frames and their
        accounting are the same either way."""
        self.run = run
        self._loop = asyncio.get_running_loop()
        local = local or {}
        for n in self.neighbours:
            if n in local:
                self._local[n] = local[n]
                continue
            if self.hub is None:
                raise ValueError(f"node {self.rank}: neighbour {n} is not in memory and this endpoint has no hub")
            self._outlets[n] = self.hub.outlet_to(n)
            self._hop[n] = hop_frame(self.rank, n)
        self._open = True

    async def say_hello(self, timeout: float) -> None:
        """Greet every neighbour and wait for every neighbour's greeting: all links are up afterwards."""
        for n in self.neighbours:
            await self.send(n, "hello", None)
        if len(self.hello_from) == len(self.neighbours):
            return
        self._greeted = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(self._greeted, timeout)
        except TimeoutError:
            missing = sorted(set(self.neighbours) - self.hello_from)
            raise NodeTimeout(f"node {self.rank} heard no hello from neighbours {missing} in {timeout:g} s") from None
        finally:
            self._greeted = None

    async def send(self, dst: int, kind: str, payload: Any, timeout: float | None = None) -> int:
        """Send to any node of the graph; returns the bytes put on the wire."""
        hop = dst if dst in self._neighbour_set else self.next_hop.get(dst)
        if hop is None or dst == self.rank:
            raise ValueError(f"node {self.rank} cannot send to {dst}: not another node of this graph")
        frames = wire.encode(self.run, self.rank, dst, kind, payload)
        nbytes = wire.frames_size(frames)
        if nbytes > self.max_bytes:
            raise MessageTooLarge(
                f"node {self.rank}: '{kind}' message to {dst} is {nbytes} bytes, over net.max_message_mb"
            )
        self.counters.sent(kind, nbytes)
        if self._trace is not None:
            self._trace(self.rank, "sent", self.rank, dst, kind, nbytes)
        if self._links is not None:
            self._shape(hop, frames, nbytes, kind, self.rank, dst)
            return nbytes
        peer = self._local.get(hop)
        if peer is not None:  # a snapshot, as a socket takes: later writes to the arrays do not travel
            peer.deliver(self.rank, _snapshot(frames))
            return nbytes
        outlet = self._outlets[hop]
        try:
            outlet.put(self._hop[hop], frames)
        except zmq.Again:
            await asyncio.wait_for(outlet.put_waiting(self._hop[hop], frames), timeout)
        return nbytes

    def deliver(self, src: int, body: list) -> None:
        """Take a message from node `src` in this process; it is handled on the next loop turn, in order."""
        self._loop.call_soon(self.receive, src, body)

    def receive(self, src: int, body: list) -> None:
        """A message from neighbour `src` (its frames' buffers), from the hub or a node in this process."""
        if self._open:  # closed endpoints lose what was in flight, as sockets do
            self._handle(src, body)

    def _drop(self, reason: str, nbytes: int, peer: int | str) -> None:
        """Count, log and trace a frame that is not delivered; `peer`: the neighbour it came from, or
        how the hub names a sender that is not one."""
        self.counters.msgs_dropped += 1
        self.counters.bytes_dropped += nbytes
        self.log("dropped", reason=reason, nbytes=nbytes, peer=f"node {peer}" if isinstance(peer, int) else peer)
        if self._trace is not None:
            self._trace(self.rank, "dropped", peer if isinstance(peer, int) else -1, self.rank, "", nbytes)

    def _handle(self, peer: int, body: list) -> None:
        """Deliver, relay or drop one message from neighbour `peer` (body: its frames' buffers).

        No await here: relays count atomically."""
        nbytes = sum(map(len, body))
        if not body:
            return self._drop("empty message", nbytes, peer)
        if nbytes > self.max_bytes:
            return self._drop("too large", nbytes, peer)
        if peer not in self._neighbour_set:
            return self._drop("sender is not a neighbour", nbytes, peer)
        try:
            header, payload = self._inbound.decode(peer, body[0], body[1:])
        except wire.WireError as exc:
            return self._drop(str(exc), nbytes, peer)
        if header.run != self.run:
            return self._drop(f"from another run ({header.run[:16]})", nbytes, peer)
        if self._offline is not None and self.offline_now():  # an offline node receives nothing
            self.counters.lost(nbytes)
            self.log("lost", reason="receiver offline", kind=header.kind, src=header.src, nbytes=nbytes)
            if self._trace is not None:
                self._trace(self.rank, "lost", header.src, header.dst, header.kind, nbytes)
            return None
        self.counters.received(header.kind, nbytes)
        if self._links is not None:
            self.counters.recv_s += nbytes * self._cost_in[peer]
        if header.dst != self.rank:
            return self._relay(header, body, nbytes)
        if self._trace is not None:
            self._trace(self.rank, "recv", header.src, self.rank, header.kind, nbytes)
        if header.kind == "hello":
            self.hello_from.add(peer)
            greeted = self._greeted
            if greeted is not None and len(self.hello_from) == len(self.neighbours) and not greeted.done():
                greeted.set_result(None)
            return None
        self.mailbox.put(_new_message(Message, (header.src, header.kind, payload, nbytes)))
        return None

    def _relay(self, header: wire.Header, body: list, nbytes: int) -> None:
        hop = self.next_hop.get(header.dst)
        peer = self._local.get(hop)
        if hop is None or (hop not in self._outlets and peer is None):
            self.log("dropped", reason=f"no route to {header.dst}", nbytes=nbytes)
            if self._trace is not None:
                self._trace(self.rank, "dropped", header.src, header.dst, header.kind, nbytes)
            return
        self.counters.sent(header.kind, nbytes)
        self.counters.bytes_relayed += nbytes
        self.counters.msgs_relayed += 1
        if self._trace is not None:
            self._trace(self.rank, "relayed", header.src, header.dst, header.kind, nbytes)
        # Synchronous enqueue keeps "received" and "forwarded" in one step for termination counting.
        if self._links is not None:
            self._shape(hop, body, nbytes, header.kind, header.src, header.dst)
        elif peer is not None:
            peer.deliver(self.rank, body)
        else:
            try:
                self._outlets[hop].put(self._hop[hop], body, copy=False)
            except zmq.Again:  # waits, in this one step, as a relay always has
                self._outlets[hop].sock.send_multipart(addressed(self._hop[hop], body), copy=False)

    # --- emulated links ------------------------------------------------------------------------
    def follow_schedule(self, schedule: Schedule) -> None:
        """Churn: from now (the run's start) this node is offline during the schedule's periods. Its
        messages then take the link path, even over ideal links."""
        if not schedule.periods:
            return
        self._offline, self._t_start = schedule, _clock()
        if self._links is None:
            self._links = {n: Link(LinkSpec(), f"{self.rank}>{n}") for n in self.neighbours}
            self._cost_in = dict.fromkeys(self.neighbours, 0.0)

    def offline_now(self) -> bool:
        return self._offline is not None and self._offline.offline_at(_clock() - self._t_start)

    def offline_periods(self) -> list[tuple[float, float]]:
        """The offline periods that have begun by now (seconds since the start), for the node's log."""
        if self._offline is None:
            return []
        now = _clock() - self._t_start
        return [(a, min(b, now)) for a, b in self._offline.periods if a <= now]

    def _shape(self, hop: int, frames: list, nbytes: int, kind: str, src: int, dst: int) -> None:
        """Put a counted message (this node's own, or one it relays from `src`) on the link to `hop`:
        lost (counted, logged), or handed over at its arrival time, after every message before it on
        that link. Greetings are never lost; nothing leaves a node that is offline."""
        link = self._links[hop]
        relayed = src != self.rank
        now = _clock()
        if self._offline is not None and self._offline.offline_at(now - self._t_start):
            return self._lose("sender offline", nbytes, kind, src, dst, hop)
        arrival, tx, delay = link.admit(nbytes, now, lossy=kind != "hello")
        counters = self.counters
        counters.send_s += tx
        if arrival is None:
            return self._lose("link loss", nbytes, kind, src, dst, hop)
        counters.latency_s += delay
        queue = link.queue
        if not queue and arrival <= now:  # an ideal link with nothing waiting: hand over now
            body = frames if relayed or hop not in self._local else _snapshot(frames)
            if self._transmit(hop, body, copy=not relayed):
                return
        if relayed:
            body, copy = frames, False  # received buffers: nobody writes to them
        elif hop in self._local or nbytes < ZERO_COPY_FROM:
            body, copy = _snapshot(frames), True
        else:  # zmq's own copy, sent as it is (a large bytes copy handed to zmq costs ms in malloc churn)
            body, copy = [frames[0], *(zmq.Frame(f, copy=True) for f in frames[1:])], False
        queue.append((arrival, body, copy, nbytes, kind, src, dst))
        self.queued += 1
        if len(queue) == 1 and link.stall is None:
            self._arm(hop, link, arrival - now)

    def _lose(self, reason: str, nbytes: int, kind: str, src: int, dst: int, hop: int) -> None:
        """A message that leaves the network on this node's link to `hop`: counted, logged, traced."""
        self.counters.lost(nbytes)
        self.log("lost", reason=reason, kind=kind, dst=dst, hop=hop, nbytes=nbytes)
        if self._trace is not None:
            self._trace(self.rank, "lost", src, dst, kind, nbytes)

    def _transmit(self, hop: int, body: list, copy: bool) -> bool:
        """Hand frames to the in-memory receiver or the socket; False when the socket would block."""
        peer = self._local.get(hop)
        if peer is not None:
            peer.deliver(self.rank, body)
            return True
        try:
            self._outlets[hop].put(self._hop[hop], body, copy)
        except zmq.Again:
            return False
        return True

    def _pump(self, hop: int) -> None:
        """The link's timer: hand over, in order, every message that is due (a timer that fires a
        little early re-arms: nothing arrives before its time), then wait for the next."""
        link = self._links[hop]
        link.timer = None
        queue, now = link.queue, _clock()
        while queue and queue[0][0] <= now:
            _, body, copy = queue[0][:3]
            if not self._transmit(hop, body, copy):
                link.stall = self._loop.create_task(self._unstall(hop, link))
                return
            queue.popleft()
            self._dequeued()
        if queue:
            self._arm(hop, link, queue[0][0] - now)

    def _arm(self, hop: int, link: Link, delay: float) -> None:
        """Wake the link's pump when its head is due. A head due within a few loop turns is checked on
        the next turn instead of through the timer heap (cheaper; `_pump` re-arms if it is early);
        a timer waits at least a millisecond, the loops' resolution, so that an early one cannot spin."""
        if delay < SOON_S:
            link.timer = self._loop.call_soon(self._pump, hop)
        else:
            link.timer = self._loop.call_later(max(delay, TIMER_FLOOR_S), self._pump, hop)

    async def _unstall(self, hop: int, link: Link) -> None:
        """Send the head of a link whose socket would have blocked, then carry on with the rest."""
        _, body, copy = link.queue[0][:3]
        await self._outlets[hop].put_waiting(self._hop[hop], body, copy)
        link.queue.popleft()
        link.stall = None
        self._dequeued()
        self._pump(hop)

    def _dequeued(self) -> None:
        self.queued -= 1
        if not self.queued and self._idle is not None:
            self._idle.set()

    async def links_idle(self) -> None:
        """Return once nothing waits in this node's link queues."""
        while self.queued:
            if self._idle is None:
                self._idle = asyncio.Event()
            self._idle.clear()
            await self._idle.wait()

    def discard_queued(self, reason: str) -> int:
        """Count what still waits in the link queues as lost, with the reason, and log it (the run
        stopped before it arrived); returns how many. Nothing is lost silently."""
        if self._links is None:
            return 0
        count = 0
        for hop, link in self._links.items():
            for handle in (link.timer, link.stall):
                if handle is not None:
                    handle.cancel()
            link.timer = link.stall = None
            while link.queue:
                _, _, _, nbytes, kind, src, dst = link.queue.popleft()
                self._lose(reason, nbytes, kind, src, dst, hop)
                count += 1
        self.queued = 0
        if self._idle is not None:
            self._idle.set()
        return count

    def close(self) -> None:
        """Stop handling deliveries (the hub's sockets close with the hub)."""
        self.discard_queued("endpoint closed with the message in its link queue")
        self.mailbox.close()
        self._open = False


def _snapshot(frames: list) -> list:
    """The frames as a socket would take them: later writes to the program's arrays do not travel."""
    return [frames[0], *(bytes(f) for f in frames[1:])]


async def links_settled(endpoints: Iterable[Endpoint], timeout: float) -> bool:
    """Wait up to `timeout` s until nothing waits in these endpoints' link queues; True when nothing does."""
    busy = [asyncio.ensure_future(ep.links_idle()) for ep in endpoints if ep.queued]
    if not busy:
        return True
    _, pending = await asyncio.wait(busy, timeout=timeout)
    for task in pending:
        task.cancel()
    return not pending
