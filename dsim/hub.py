"""One worker process's sockets: a ROUTER that all its nodes receive on, a DEALER per peer process.

Sockets belong to processes, not nodes: a message from a node here to a neighbour in another process
leaves through the one DEALER to that process and arrives on its ROUTER as ``[hop + header, buffers...]``:
`hop` (8 bytes: the ranks of this hop's sender and receiver), which tells the receiving hub which of
its nodes the message is for, leads the message's first frame. The message's own frames (dsim.wire)
travel unchanged behind it, and the hop is not counted in any node's bytes (it is addressing, like
ZeroMQ's identity frame). It rides in the header's frame, not a frame of its own: a frame costs ZeroMQ
and pyzmq more on both ends than copying the header once.

With a socket, a port and a connection per node, a process of more than about a thousand nodes ran
out of ZeroMQ sockets, file descriptors and ports; per process pair, 20,000 nodes in ten processes
need ten ports.

A peer process is known by its DEALER identity, ``<run id>|<its ROUTER address>``: a frame from an
identity outside the peer table (another run, a stray client), or claiming a sender that its process
does not host, is dropped, logged and counted by the receiving node (or, when the frame names no node
of this process, by the first node hosted here).

With a run key (dsim.secure) the ROUTER is a CURVE server and every DEALER a CURVE client: a peer
without the key never gets a frame through, and each connection it tries is dropped, logged and
counted by the first node hosted here, with the handshake's failure as the reason.
"""

from __future__ import annotations

import asyncio
import struct
from collections import defaultdict
from collections.abc import Mapping
from types import ModuleType
from typing import TYPE_CHECKING

import zmq
import zmq.asyncio

from dsim import secure
from dsim.errors import DsimError

if TYPE_CHECKING:
    from dsim.transport import Endpoint

HOP = struct.Struct("<II")  # (hop sender rank, hop receiver rank)
_unpack_hop = HOP.unpack_from
NEVER_COPY_BELOW = 2**31 - 1  # pyzmq sends large frames zero-copy even with copy=True unless told otherwise
_NOBLOCK = int(zmq.NOBLOCK)
_MORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)
# The option as pyzmq's own enum member: getsockopt turns its argument into one, and that is quickest
# from a member (0.5 us less a call than from an int).
_EVENTS, _POLLIN = zmq.EVENTS, int(zmq.POLLIN)
_COPY_HEADER_BELOW = 1 << 14  # a received header shorter than this is copied past its hop, a longer one viewed
_DRAIN_BATCH = 256  # messages handled per loop turn before other tasks get a turn
# The hot path calls pyzmq's compiled socket methods directly. Its Python layer (send_multipart,
# recv_multipart) costs about 10 us a message in flag enums and checks, and ends every drain with a
# ZMQError built from errno: as much as the rest of a small message's path.
_send = zmq.backend.Socket.send
_recv = zmq.backend.Socket.recv
_get = zmq.backend.Socket.get


def send_now(sock: zmq.Socket, frames: list, copy: bool = True) -> None:
    """Queue a multipart message without waiting; zmq.Again when the socket would block (nothing is
    queued then: a message is accepted whole from its first frame on)."""
    if len(frames) > 1:  # most small messages are one frame: no slice to build
        for frame in frames[:-1]:
            _send(sock, frame, _MORE_NOBLOCK, copy)
    _send(sock, frames[-1], _NOBLOCK, copy)


class Outlet:
    """The way to one peer process: its DEALER, as a plain (blocking-API) view for the hot path, which
    sends without creating a future per message, and as the asyncio socket, the fallback when a send
    would block; with dsim's compiled module (dsim.native), the socket's handle for it."""

    __slots__ = ("sock", "dealer", "native", "handle")

    def __init__(self, dealer: zmq.asyncio.Socket, native: ModuleType | None) -> None:
        self.dealer = dealer
        self.sock = zmq.Socket.shadow(dealer.underlying)
        self.sock.copy_threshold = NEVER_COPY_BELOW
        self.native, self.handle = native, dealer.underlying

    def put(self, hop: bytes, frames: list, copy: bool = True) -> None:
        """Queue a message behind its hop without waiting; zmq.Again when the socket would block
        (nothing is queued then)."""
        native = self.native
        if native is None:
            return send_now(self.sock, addressed(hop, frames), copy)
        more = len(frames) > 1
        if not native.send(self.handle, hop, frames[0], more):  # hop and header copied as one frame
            raise zmq.Again()
        if more:  # the rest follows the accepted first frame: a multipart message is queued whole
            sock = self.sock
            for frame in frames[1:-1]:
                _send(sock, frame, _MORE_NOBLOCK, copy)
            _send(sock, frames[-1], _NOBLOCK, copy)
        return None

    async def put_waiting(self, hop: bytes, frames: list, copy: bool = True) -> None:
        """Queue a message behind its hop, waiting while the socket would block."""
        await self.dealer.send_multipart(addressed(hop, frames), copy=copy)

    def close(self) -> None:
        self.native = None  # the handle dies with the socket; pyzmq's own checks guard it from now on
        self.dealer.close(linger=0)


def hop_frame(src: int, dst: int) -> bytes:
    return HOP.pack(src, dst)


def addressed(hop: bytes, frames: list) -> list:
    """A message's frames as a hub sends them: the hop in front of its header."""
    return [hop + frames[0], *frames[1:]]


class Hub:
    """Bind, then `attach` every endpoint hosted here, then `connect` once the peer table is known."""

    def __init__(self, ctx: zmq.asyncio.Context, max_bytes: int, key: secure.RunKey | None = None,
                 native: ModuleType | None = None) -> None:
        """`key`: the run key (its context's dsim.secure.Gate started), or None for plain sockets;
        `native`: dsim's compiled ZeroMQ calls (dsim.native.load), or None for pyzmq's alone."""
        self.ctx, self.key, self._native = ctx, key, native
        self.router = ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.MAXMSGSIZE, max_bytes)
        self.router.setsockopt(zmq.RCVHWM, 0)
        secure.serve(self.router, key, max_bytes)
        self._refused = secure.HandshakeWatch(self.router, key)
        # A plain (blocking-API) view of the same socket: draining without a future per message.
        self._router_fast = zmq.Socket.shadow(self.router.underlying)
        self.address = ""
        self.nodes: dict[int, Endpoint] = {}
        self._addresses: Mapping[int, str] = {}
        self._hosted_by: dict[bytes, frozenset[int]] = {}  # peer identity -> the ranks that process hosts
        self._outlets: dict[str, Outlet] = {}  # by peer address
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reader_fd: int | None = None
        self._router_handle = 0

    @property
    def io(self) -> str:
        """How this hub drives its sockets: "native" (dsim.native) or "pyzmq"."""
        return "pyzmq" if self._native is None else "native"

    def bind(self, host: str, port_range: tuple[int, int] | None) -> str:
        """Bind to a free port (the OS picks one unless a range is given); returns the tcp address."""
        try:
            if port_range is None:
                port = self.router.bind_to_random_port(f"tcp://{host}")
            else:
                lo, hi = port_range
                port = self.router.bind_to_random_port(
                    f"tcp://{host}", min_port=lo, max_port=hi + 1, max_tries=4 * (hi - lo + 1)
                )
        except zmq.ZMQBindError:
            raise DsimError(f"no free port in {port_range[0]}-{port_range[1]}") from None
        except zmq.ZMQError as exc:
            raise DsimError(f"cannot bind on {host}: {exc}") from None
        self.address = f"tcp://{host}:{port}"
        return self.address

    def attach(self, endpoint: Endpoint) -> None:
        self.nodes[endpoint.rank] = endpoint

    def connect(self, run: str, addresses: Mapping[int, str]) -> None:
        """Open a DEALER to every process hosting a neighbour of a node here, and start receiving.

        `addresses`: every node's process address (the peer table)."""
        self._addresses = addresses
        by_address: dict[str, set[int]] = defaultdict(set)
        for rank, address in addresses.items():
            by_address[address].add(rank)
        self._hosted_by = {_identity(run, a): frozenset(ranks) for a, ranks in by_address.items()
                           if a != self.address}
        needed = {addresses[n] for ep in self.nodes.values() for n in ep.neighbours if n not in self.nodes}
        identity = _identity(run, self.address)
        for address in sorted(needed):
            sock = self.ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.IDENTITY, identity)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 0)
            sock.copy_threshold = NEVER_COPY_BELOW
            secure.dial(sock, self.key)
            sock.connect(address)
            self._outlets[address] = Outlet(sock, self._native)
        self._loop = asyncio.get_running_loop()
        self._router_handle = self.router.underlying
        self._reader_fd = self._router_fast.getsockopt(zmq.FD)
        self._loop.add_reader(self._reader_fd, self._drain)
        self._loop.call_soon(self._drain)  # messages may have queued before the reader existed
        self._refused.start(self._loop, self._refuse)

    def outlet_to(self, rank: int) -> Outlet:
        """The way to the process that hosts `rank`."""
        return self._outlets[self._addresses[rank]]

    def _drain(self) -> None:
        """Receive everything queued on the ROUTER, a bounded batch at a time. Its FD is edge-triggered:
        it signals again only once the socket has been seen empty (EAGAIN, or ZMQ_EVENTS without
        POLLIN), as this loop ends."""
        if self._reader_fd is None:
            return
        if self._native is not None:
            return self._drain_native()
        sock = self._router_fast
        for _ in range(_DRAIN_BATCH):
            if not _get(sock, _EVENTS) & _POLLIN:
                return
            # A ROUTER hands the sender's identity and then at least one frame. The frames come as
            # zmq.Frames, whose `more` is read with them: asking the socket for RCVMORE instead costs
            # pyzmq an enum lookup, 1.8 us a frame. The small identity and hop-and-header frames are
            # copied out as bytes (a small header once more, past its hop: cheaper than a memoryview,
            # and bytes are what the decoder reads quickest); array frames behind them stay zero-copy.
            identity = _recv(sock, _NOBLOCK, True)
            frame = _recv(sock, _NOBLOCK, False)
            head = frame.bytes
            body = [head[HOP.size:] if len(head) < _COPY_HEADER_BELOW else memoryview(head)[HOP.size:]]
            while frame.more:
                frame = _recv(sock, _NOBLOCK, False)
                body.append(frame.buffer)
            self._dispatch(identity, head, body)
        self._loop.call_soon(self._drain)  # more waiting: let other tasks run first

    def _drain_native(self) -> None:
        """_drain through the compiled module: identity and header frames of many messages per call,
        until EAGAIN, with no ZMQ_EVENTS query per message; frames behind a header come zero-copy."""
        sock, drain, left = self._router_fast, self._native.drain, _DRAIN_BATCH
        while left > 0:
            messages, drained = drain(self._router_handle, left)
            left -= len(messages)
            for identity, head, more in messages:  # each as _drain takes it apart
                body = [head[HOP.size:] if len(head) < _COPY_HEADER_BELOW else memoryview(head)[HOP.size:]]
                while more:
                    frame = _recv(sock, _NOBLOCK, False)
                    body.append(frame.buffer)
                    more = frame.more
                self._dispatch(identity, head, body)
            if drained or self._reader_fd is None:  # empty, or closed while a message was handled
                return
        self._loop.call_soon(self._drain)  # more waiting: let other tasks run first

    def _dispatch(self, identity: bytes, head: bytes, body: list) -> None:
        """Hand one received message to the node its hop names, or drop it."""
        if len(head) < HOP.size:
            return self._first_node()._drop("no hop", len(head) + _size(body[1:]), _name(identity))
        src, dst = _unpack_hop(head)
        node = self.nodes.get(dst)
        if node is None:
            return self._first_node()._drop(f"for node {dst}, not hosted here", _size(body), _name(identity))
        hosted = self._hosted_by.get(identity)
        if hosted is None:
            return node._drop("not from a process of this run", _size(body), _name(identity))
        if src not in hosted:
            return node._drop(f"claims sender {src}, which that process does not host", _size(body),
                              _name(identity))
        node.receive(src, body)
        return None

    def _refuse(self, reason: str) -> None:
        """A connection failed the CURVE handshake: whatever it sent is dropped, as one message."""
        self._first_node()._drop(reason, 0, "a connection without the run key")

    def _first_node(self) -> Endpoint:
        return self.nodes[min(self.nodes)]

    def close(self) -> None:
        if self._reader_fd is not None and self._loop is not None:
            self._loop.remove_reader(self._reader_fd)
            self._reader_fd = None
        self._refused.close()
        for outlet in self._outlets.values():
            outlet.close()
        self.router.close(linger=0)


def _identity(run: str, address: str) -> bytes:
    return f"{run}|{address}".encode()


def _size(frames: list) -> int:
    return sum(len(f) for f in frames)


def _name(identity: bytes) -> str:
    return identity[:64].decode("utf-8", "replace")
