"""A mailbox's waits, with one timer per mailbox: each wait still ends at its own deadline, served or not."""

from __future__ import annotations

import asyncio

import pytest

from dsim.transport import Mailbox, Message, NodeTimeout


def _who() -> str:
    return "node 0 (peer)"


def test_a_short_wait_behind_a_long_one_times_out_at_its_own_deadline() -> None:
    async def main() -> tuple[float, Message]:
        box, loop = Mailbox(), asyncio.get_running_loop()
        long_wait = asyncio.ensure_future(box.get("late", None, 30.0, _who))
        await asyncio.sleep(0)  # one loop turn: the long wait registers and arms the timer first
        assert box.waiting() == [("late", None)]
        start = loop.time()
        with pytest.raises(NodeTimeout, match=r"waited 0.2 s for 'never' from node 3"):
            await box.get("never", 3, 0.2, _who)
        waited = loop.time() - start
        box.put(Message(1, "late", "payload", 7))  # the long wait is still there, and is served
        return waited, await asyncio.wait_for(long_wait, 5)

    waited, msg = asyncio.run(main())
    assert 0.19 <= waited < 5  # not the long wait's 30 s
    assert msg == Message(1, "late", "payload", 7)


def test_served_waits_arm_one_timer_and_an_earlier_deadline_still_fires() -> None:
    async def main() -> tuple[int, list[tuple[str, int | None]]]:
        box = Mailbox()
        served = 0
        for i in range(200):  # lock-step: every wait is served
            wait = asyncio.ensure_future(box.get("x", 1, 60.0, _who))
            await asyncio.sleep(0)  # one loop turn: the wait registers, so the put serves a waiter
            assert box.waiting() == [("x", 1)]
            box.put(Message(1, "x", i, 4))
            served += (await wait).payload == i
        assert box._timer is not None  # armed once, by the first wait, for its 60 s deadline
        with pytest.raises(NodeTimeout):
            await box.get("x", 2, 0.05, _who)  # an earlier deadline replaces the 60 s timer, and fires
        assert box._timer is None  # nothing waits any more: no timer either
        return served, box.waiting()

    served, waiting = asyncio.run(main())
    assert served == 200 and waiting == []


def test_a_cancelled_wait_leaves_nothing_behind_and_close_stops_the_timer() -> None:
    async def main() -> list[tuple[str, int | None]]:
        box = Mailbox()
        wait = asyncio.ensure_future(box.get("x", None, 60.0, _who))
        await asyncio.sleep(0)
        assert box.waiting() == [("x", None)]
        wait.cancel()
        with pytest.raises(asyncio.CancelledError):
            await wait
        box.put(Message(1, "x", 1, 4))  # nobody waits: it is queued for the next get
        got = await box.get("x", None, 1.0, _who)
        assert got.payload == 1
        box.close()
        assert box._timer is None
        return box.waiting()

    assert asyncio.run(main()) == []


def test_a_wait_for_a_set_of_sources_takes_theirs_in_arrival_order_and_leaves_the_rest() -> None:
    async def main() -> tuple[list[int], Message | None, str]:
        box = Mailbox()
        for src in (3, 2, 1, 2):
            box.put(Message(src, "x", src, 4))
        want = frozenset({1, 2})
        order = [box.take("x", want).src, box.take("x", want).src, box.take("x", want).src]
        assert box.take("x", want) is None
        waiting = asyncio.ensure_future(box.get("x", want, 5.0, _who))
        await asyncio.sleep(0)
        assert box.waiting() == [("x", want)]
        box.put(Message(4, "x", 4, 4))  # not one of the set: queued
        box.put(Message(1, "x", 1, 4))
        got = await waiting
        with pytest.raises(NodeTimeout) as info:
            await box.get("x", want, 0.05, _who)
        return order + [got.src], box.take("x", None), str(info.value)

    order, left, timeout = asyncio.run(main())
    assert order == [2, 1, 2, 1] and left.src == 3  # 3 and 4 stay queued for whoever asks
    assert timeout.endswith("for 'x' from nodes 1, 2")
