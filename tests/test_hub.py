"""The process hub over real ZeroMQ sockets in one process: two hubs, each hosting nodes of a small graph,
deliver by hop, relay across processes, and drop (logging and counting) what does not belong."""

from __future__ import annotations

import asyncio
import struct
from types import ModuleType

import msgpack
import networkx as nx
import numpy as np
import pytest
import zmq
import zmq.asyncio

from dsim import native, wire
from dsim.hub import Hub
from dsim.routing import Routes
from dsim.transport import Endpoint

RUN = "run-hub-test"
MAX_BYTES = 1 << 16


class Drops:
    """Counts the drops every node logs, and wakes a waiter once `target` of them have happened."""

    def __init__(self, target: int) -> None:
        self.count, self.target = 0, target
        self.reached = asyncio.Event()

    def add(self) -> None:
        self.count += 1
        if self.count >= self.target:
            self.reached.set()


class Log:
    def __init__(self, drops: Drops | None = None) -> None:
        self.events: list[tuple[str, dict]] = []
        self.drops = drops

    def __call__(self, event: str, **fields) -> None:
        self.events.append((event, fields))
        if event == "dropped" and self.drops is not None:
            self.drops.add()

    def reasons(self) -> list[str]:
        return [f["reason"] for e, f in self.events if e == "dropped"]


@pytest.fixture(params=["pyzmq", "native"])
def io(request) -> ModuleType | None:
    """Both ways a hub drives its sockets: pyzmq's calls alone, and dsim's compiled module."""
    if request.param == "pyzmq":
        return None
    module, why = native.load()
    if module is None:
        pytest.skip(f"the compiled path cannot be tested here: {why}")
    return module


async def _two_processes(graph: nx.Graph, placement: dict[int, int], io: ModuleType | None,
                         drops: Drops | None = None):
    """Hubs 0 and 1 with the graph's nodes placed on them, connected and greeted."""
    ctx = zmq.asyncio.Context()
    hubs = [Hub(ctx, MAX_BYTES, native=io) for _ in range(2)]
    for hub in hubs:
        hub.bind("127.0.0.1", None)
    logs = {r: Log(drops) for r in graph.nodes}
    eps = {}
    for r in graph.nodes:
        hub = hubs[placement[r]]
        eps[r] = Endpoint(hub, r, tuple(sorted(graph.neighbors(r))), Routes(graph, r), MAX_BYTES, logs[r])
        hub.attach(eps[r])
    addresses = {r: hubs[placement[r]].address for r in graph.nodes}
    for hub in hubs:
        hub.connect(RUN, addresses)
    for r, ep in eps.items():
        ep.connect(RUN, {n: eps[n] for n in graph.nodes if placement[n] == placement[r]})
    await asyncio.gather(*(ep.say_hello(10.0) for ep in eps.values()))
    return ctx, hubs, eps, logs


def _close(ctx, hubs, eps) -> None:
    for ep in eps.values():
        ep.close()  # an endpoint, or a test's own socket
    for hub in hubs:
        hub.close()
    ctx.term()


def test_messages_cross_processes_by_hop_and_relay_through_both(io: ModuleType | None) -> None:
    async def main():
        graph = nx.path_graph(4)  # 0-1-2-3, placed 0,1 | 2,3: 0 -> 3 crosses the hubs through relays 1 and 2
        ctx, hubs, eps, logs = await _two_processes(graph, {0: 0, 1: 0, 2: 1, 3: 1}, io)
        try:
            x = np.arange(5000, dtype=np.float32)  # a framed array (over wire.INLINE_MAX)
            await eps[0].send(3, "far", {"x": x})
            await eps[2].send(1, "near", 7)
            far = await eps[3].mailbox.get("far", 0, 10.0, lambda: "node 3")
            near = await eps[1].mailbox.get("near", 2, 10.0, lambda: "node 1")
            return eps, far, near, hubs
        finally:
            _close(ctx, hubs, eps)

    eps, far, near, hubs = asyncio.run(main())
    np.testing.assert_array_equal(far.payload["x"], np.arange(5000, dtype=np.float32))
    assert near.payload == 7
    # one DEALER per peer process, whatever the number of nodes
    assert [len(h._outlets) for h in hubs] == [1, 1]
    assert eps[1].counters.msgs_relayed == 1 and eps[2].counters.msgs_relayed == 1
    # the hop is addressing: counted bytes are the message's frames alone, equal at both ends
    size = far.nbytes
    assert eps[0].counters.by_kind["far"].bytes_sent == size == eps[3].counters.by_kind["far"].bytes_recv


def test_frames_that_do_not_belong_are_dropped_logged_and_counted(io: ModuleType | None) -> None:
    async def main():
        graph = nx.path_graph(3)  # 0-1-2, placed 0,1 | 2
        drops = Drops(8)
        ctx, hubs, eps, logs = await _two_processes(graph, {0: 0, 1: 0, 2: 1}, io, drops)
        try:
            impostor = hubs[1]._outlets[hubs[0].address].dealer  # hub 1's own socket to hub 0, misused
            stranger = ctx.socket(zmq.DEALER)
            stranger.setsockopt(zmq.IDENTITY, b"another-run|tcp://10.0.0.9:1")
            stranger.setsockopt(zmq.LINGER, 0)
            stranger.connect(hubs[0].address)
            eps[stranger] = stranger  # closed with the endpoints
            hop = struct.pack("<II", 2, 1)  # node 2 -> node 1: a real edge across the processes
            header = wire.encode(RUN, 2, 1, "ping", None)[0]
            other_run = msgpack.packb({"v": 1, "r": "another", "s": 2, "d": 1, "k": "ping", "p": None})
            await impostor.send_multipart([b"short"])  # too short to hold a hop
            await impostor.send_multipart([hop + b"\xc1garbage"])  # undecodable header
            await impostor.send_multipart([hop + other_run])  # a header of another run
            await impostor.send_multipart([hop + header, b"x" * MAX_BYTES])  # over max_bytes
            await impostor.send_multipart([struct.pack("<II", 0, 1) + header])  # node 0 is not hub 1's
            await impostor.send_multipart([struct.pack("<II", 2, 9) + header])  # no node 9 here
            await impostor.send_multipart([struct.pack("<II", 2, 0) + header])  # 2 is no neighbour of 0
            await stranger.send_multipart([hop + header])  # not a process of this run
            await impostor.send_multipart([hop + wire.encode(RUN, 2, 1, "ping", 1)[0]])  # and a good one
            msg = await eps[1].mailbox.get("ping", 2, 10.0, lambda: "node 1")
            try:  # the stranger's frame comes on its own connection, in no order with the impostor's
                await asyncio.wait_for(drops.reached.wait(), 10)
            except TimeoutError:
                raise AssertionError((logs[0].reasons(), logs[1].reasons())) from None
            return msg, eps, logs
        finally:
            _close(ctx, hubs, eps)

    msg, eps, logs = asyncio.run(main())
    assert msg.payload == 1
    node1, node0 = logs[1].reasons(), logs[0].reasons()
    for expected in ("undecodable", "another run", "too large", "claims sender 0",
                     "not from a process of this run"):
        assert any(expected in r for r in node1), (expected, node1)
    # frames that name no node of this process are the first hosted node's to log
    assert any("no hop" in r for r in node0) and any("node 9, not hosted here" in r for r in node0)
    assert any("not a neighbour" in r for r in node0), node0
    assert eps[1].counters.msgs_dropped == 5 and eps[0].counters.msgs_dropped == 3
    assert eps[1].counters.total.msgs_recv == 3  # two hellos and the good ping: nothing dropped counts as received
