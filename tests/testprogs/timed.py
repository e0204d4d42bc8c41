"""One node sends timed messages to another; the receiver reports how long each took.

Each payload carries the sender's `time.monotonic()` at send (CLOCK_MONOTONIC is system-wide, so two
processes of one machine compare), the message's index and `timed.bytes` bytes of data. The sender
sends `timed.count` messages back to back and returns at once (they wait in its link queue). The
receiver takes them until it has them all or none came for `timed.wait` s (lost messages never come),
and returns each one's index, its delay from its own send to its receipt, and its receipt time from the
first message's send (messages sent back to back share the link from then on). Every other node
returns at once.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import numpy as np
from msgspec import Meta

from dsim.node import Node
from dsim.options import Options
from dsim.program import Program
from dsim.transport import NodeTimeout

KIND = "timed"


class TimedOptions(Options):
    """Who sends how many messages of what size, and how long the receiver waits for the next one."""

    src: Annotated[int, Meta(ge=0, description="the sending rank")] = 0
    dst: Annotated[int, Meta(ge=0, description="the receiving rank (a non-neighbour is reached by relays)")] = 1
    count: Annotated[int, Meta(ge=1, description="messages sent back to back")] = 1
    bytes: Annotated[int, Meta(ge=0, description="bytes of data in each message")] = 0
    wait: Annotated[float, Meta(gt=0, description="seconds the receiver waits for the next message")] = 30.0


class Peer(Node):
    role = "peer"

    async def run(self) -> dict[str, Any]:
        opt = self.options
        if self.rank == opt.src:
            data = np.zeros(opt.bytes, dtype=np.uint8)
            for i in range(opt.count):
                await self.send(opt.dst, KIND, {"i": i, "t": time.monotonic(), "data": data})
            return {"sent": opt.count}
        if self.rank != opt.dst:
            return {}
        order, delays, since_first = [], [], []
        first = None
        for _ in range(opt.count):
            try:
                msg = await self.recv(KIND, src=opt.src, timeout=opt.wait)
            except NodeTimeout:  # the rest were lost
                break
            now = time.monotonic()
            if msg.payload["i"] == 0:
                first = msg.payload["t"]
            delays.append(now - msg.payload["t"])
            since_first.append(None if first is None else now - first)
            order.append(msg.payload["i"])
        return {"order": order, "delays": delays, "since_first": since_first}


PROGRAM = Program(name="timed", roles={"peer": Peer}, options=TimedOptions)
