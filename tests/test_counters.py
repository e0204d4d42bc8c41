"""A process's traffic sums, kept by its nodes' counters as they count, equal the sum of their balances."""

from __future__ import annotations

import random

from dsim.transport import Counters, Traffic


def test_process_sums_follow_every_count_of_every_node() -> None:
    shared = Traffic()
    nodes = [Counters(process=shared) for _ in range(5)]
    rng = random.Random(0)
    for _ in range(2000):
        node, nbytes = rng.choice(nodes), rng.randrange(1, 5000)
        op = rng.choice(("sent", "received", "lost"))
        node.lost(nbytes) if op == "lost" else getattr(node, op)(rng.choice("abc"), nbytes)
    balances = [n.balance() for n in nodes]
    assert shared.as_dict() == {k: sum(b[k] for b in balances) for k in balances[0]}
    assert shared.msgs_recv > sum(n.total.msgs_recv for n in nodes)  # the lost ones count as received
    assert Counters().process is not Counters().process  # a lone node keeps its own
