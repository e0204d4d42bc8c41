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
