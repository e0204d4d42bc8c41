"""Next hops along shortest paths, so a node can reach any other node through its neighbours."""

from __future__ import annotations

from collections import deque

import networkx as nx


def next_hops(graph: nx.Graph, source: int) -> dict[int, int]:
    """For every other node, the neighbour of `source` that starts a shortest path to it.

    Breadth-first over sorted neighbours, so the choice is deterministic; O(nodes + edges) per node.
    """
    first: dict[int, int] = {}
    queue: deque[int] = deque()
    for nbr in sorted(graph.neighbors(source)):
        first[nbr] = nbr
        queue.append(nbr)
    seen = {source, *first}
    while queue:
        node = queue.popleft()
        for nbr in sorted(graph.neighbors(node)):
            if nbr not in seen:
                seen.add(nbr)
                first[nbr] = first[node]
                queue.append(nbr)
    return first


class Routes:
    """A node's next hops, computed on the first message to or through a non-neighbour.

    Most programs only talk to neighbours: computing every node's table up front cost O(nodes^2) time
    and memory per machine (seconds and gigabytes past ten thousand nodes) for tables nobody read."""

    def __init__(self, graph: nx.Graph, source: int) -> None:
        self._graph, self._source = graph, source
        self._table: dict[int, int] | None = None

    def get(self, dst: int) -> int | None:
        """The neighbour to hand a message for `dst` to; None when `dst` is this node or not in the graph."""
        if self._table is None:
            self._table = next_hops(self._graph, self._source)
        return self._table.get(dst)
