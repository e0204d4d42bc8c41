"""The graph invariants every dsim topology obeys, and DecentralizePy's edge-list file format.

File format (REFERENCE.md §7): the first line is the number of nodes, then one undirected
edge ``u v`` per line. dsim also accepts blank lines, ``#`` comments (whole-line or
trailing) and edges listed twice (DecentralizePy writes both ``u v`` and ``v u``).
:func:`write_edges` writes the strict format, each edge once, so DecentralizePy can read it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import networkx as nx

from dsim.errors import DsimError

StrPath = str | os.PathLike[str]


class TopologyError(DsimError):
    """A topology that cannot be built or a graph file that cannot be used (one-line message)."""


def validate(graph: nx.Graph) -> nx.Graph:
    """Check the invariants the runtime relies on; return the graph with its nodes in sorted order.

    Nodes must be exactly the ints 0..n-1 (ranks), n >= 2, no self loops, connected, and
    ``graph.graph["server"]`` (if set) one of the nodes. A graph whose nodes were inserted
    out of order is returned as a canonical copy; otherwise the same object comes back,
    with ``name`` and ``server`` defaulted in ``graph.graph``.
    """
    if not isinstance(graph, nx.Graph) or graph.is_directed() or graph.is_multigraph():
        raise TopologyError(f"a topology must be an undirected simple networkx Graph, got {type(graph).__name__}")
    n = graph.number_of_nodes()
    if n < 2:
        raise TopologyError(f"a topology needs at least 2 nodes, got {n}")
    nodes = list(graph.nodes)
    if nodes != list(range(n)):
        bad = [v for v in nodes if not _is_rank(v) or not 0 <= v < n]
        if bad:
            raise TopologyError(f"graph nodes must be the ranks 0..{n - 1}; found node {bad[0]!r}")
        graph = _canonical_copy(graph)
    loops = list(nx.selfloop_edges(graph))
    if loops:
        raise TopologyError(f"graph has a self loop on node {loops[0][0]}")
    _check_connected(graph, where="graph")
    graph.graph.setdefault("name", "custom")
    server = graph.graph.setdefault("server", None)
    if server is not None and not (_is_rank(server) and 0 <= server < n):
        raise TopologyError(f"graph server must be a node rank in 0..{n - 1} or None, got {server!r}")
    return graph


def read_edges(path: StrPath) -> nx.Graph:
    """Read a DecentralizePy edge-list file; errors name the file and the line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TopologyError(f"edge file {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TopologyError(f"cannot read edge file {path}: {exc}") from None
    lines = _content_lines(text)
    first = next(lines, None)
    if first is None:
        raise TopologyError(f"{path}: empty file; line 1 must be the number of nodes")
    lineno, tokens = first
    if len(tokens) != 1 or not _is_int_token(tokens[0]):
        raise TopologyError(f"{path}:{lineno}: expected the number of nodes, got {' '.join(tokens)!r}")
    n = int(tokens[0])
    if n < 2:
        raise TopologyError(f"{path}:{lineno}: a topology needs at least 2 nodes, got {n}")
    edges: list[tuple[int, int]] = []
    for lineno, tokens in lines:
        if len(tokens) != 2 or not all(_is_int_token(t) for t in tokens):
            raise TopologyError(f"{path}:{lineno}: expected an edge 'u v' of two integers, got {' '.join(tokens)!r}")
        u, v = int(tokens[0]), int(tokens[1])
        for x in (u, v):
            if not 0 <= x < n:
                raise TopologyError(f"{path}:{lineno}: node {x} is out of range 0..{n - 1} (line 1 says {n} nodes)")
        if u == v:
            raise TopologyError(f"{path}:{lineno}: self loop on node {u}")
        edges.append((min(u, v), max(u, v)))
    graph = nx.Graph(name="file", server=None, source=str(path))
    graph.add_nodes_from(range(n))
    graph.add_edges_from(sorted(set(edges)))
    _check_connected(graph, where=str(path))
    return validate(graph)


def write_edges(graph: nx.Graph, path: StrPath) -> None:
    """Write the strict DecentralizePy format (node count, then each edge once as 'u v', u < v)."""
    graph = validate(graph)
    path = Path(path)
    try:
        path.write_text(edge_text(graph), encoding="utf-8")
    except OSError as exc:
        raise TopologyError(f"cannot write edge file {path}: {exc.strerror or exc}") from None


def edge_text(graph: nx.Graph) -> str:
    """The canonical text of a graph: what write_edges writes and graph_hash hashes."""
    edges = sorted((u, v) if u < v else (v, u) for u, v in graph.edges())
    return f"{graph.number_of_nodes()}\n" + "".join(f"{u} {v}\n" for u, v in edges)


def _content_lines(text: str) -> Iterator[tuple[int, list[str]]]:
    """(1-based line number, tokens) of each line that is not blank once comments are removed."""
    for lineno, line in enumerate(text.splitlines(), start=1):
        tokens = line.split("#", 1)[0].split()
        if tokens:
            yield lineno, tokens


def _is_int_token(token: str) -> bool:
    return token.lstrip("+-").isdigit() and token.isascii()


def _is_rank(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _canonical_copy(graph: nx.Graph) -> nx.Graph:
    copy = nx.Graph(**graph.graph)
    copy.add_nodes_from(range(graph.number_of_nodes()))
    copy.add_edges_from(sorted((u, v) if u < v else (v, u) for u, v in graph.edges()))
    return copy


def _check_connected(graph: nx.Graph, *, where: str) -> None:
    if nx.is_connected(graph):
        return
    reached = nx.node_connected_component(graph, 0)
    missing = sorted(set(graph.nodes) - reached)
    count = nx.number_connected_components(graph)
    raise TopologyError(
        f"{where}: graph is disconnected ({count} components); node {missing[0]} cannot be "
        f"reached from node 0 ({len(missing)} nodes unreachable)"
    )
