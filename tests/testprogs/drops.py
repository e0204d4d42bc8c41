"""What the test programs that are attacked from outside share: waiting for node 0's drop count."""

from __future__ import annotations

import asyncio

from dsim.node import Node


async def until_dropped(node: Node, count: int) -> int:
    """Return the node's drop count once it reaches `count`; TimeoutError after the node's timeout.

    The drops come from a test process outside the run, which has no message to wait on: the counter is
    checked every 20 ms, within the node's own deadline."""
    counters = node._ctx.endpoint.counters
    loop = asyncio.get_running_loop()
    deadline = loop.time() + node.timeout
    while counters.msgs_dropped < count:
        if loop.time() > deadline:
            raise TimeoutError(f"only {counters.msgs_dropped} frames dropped, waited for {count}")
        await asyncio.sleep(0.02)
    return counters.msgs_dropped
