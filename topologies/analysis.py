"""What a topology looks like: a summary, a drawing, gossip weights and a fingerprint hash."""

from __future__ import annotations

import hashlib
import math
from functools import reduce
from operator import or_
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

from .edgefile import StrPath, TopologyError, edge_text, validate

SPECTRAL_MAX_NODES = 2000
DIAMETER_MAX_NODES = 2000
"""Above these sizes the eigenvalue solve (O(n^3)) or diameter gets slow; summary reports None."""
LABEL_MAX_NODES = 40
SPRING_MAX_NODES = 300
LATTICES = ("grid", "torus")
CIRCLES = ("ring", "full", "regular", "small-world")


def graph_hash(graph: nx.Graph) -> str:
    """sha256 hex of the node count and sorted edge list: equal to the sha256 of write_edges' file."""
    return hashlib.sha256(edge_text(graph).encode("ascii")).hexdigest()


def metropolis_hastings_weights(graph: nx.Graph) -> dict[int, dict[int, float]]:
    """W[i][j] = 1 / (1 + max(deg i, deg j)) per edge, W[i][i] = 1 - row sum.

    Symmetric and doubly stochastic, so repeated averaging with it converges to the plain mean:
    the standard gossip weights of decentralized SGD.
    """
    degree = dict(graph.degree())
    weights: dict[int, dict[int, float]] = {}
    for i in graph.nodes:
        row = {j: 1.0 / (1 + max(degree[i], degree[j])) for j in graph.adj[i]}
        row[i] = 1.0 - math.fsum(row.values())
        weights[i] = row
    return weights


def spectral_gap(graph: nx.Graph) -> float | None:
    """1 - the second largest eigenvalue modulus of the MH weight matrix (larger mixes faster).

    None above SPECTRAL_MAX_NODES nodes, where the dense solve would dominate the run time.
    """
    n = graph.number_of_nodes()
    if n > SPECTRAL_MAX_NODES:
        return None
    matrix = _mh_matrix(graph)
    eigenvalues = np.linalg.eigvalsh(matrix)  # ascending; the largest is 1
    slem = max(abs(eigenvalues[0]), abs(eigenvalues[-2]))
    return float(max(0.0, 1.0 - slem))


def summary(graph: nx.Graph) -> dict[str, Any]:
    """Plain JSON-able facts about a topology: counts, degrees, diameter, MH spectral gap, hash."""
    graph = validate(graph)
    n = graph.number_of_nodes()
    degrees = [d for _, d in graph.degree()]
    server = graph.graph.get("server")
    info: dict[str, Any] = {
        "name": graph.graph.get("name"),
        "nodes": n,
        "workers": n - (server is not None),
        "server": server,
        "edges": graph.number_of_edges(),
        "degree": {"min": min(degrees), "mean": sum(degrees) / n, "max": max(degrees)},
        "diameter": _diameter(graph),
        "spectral_gap": spectral_gap(graph),
        "params": dict(graph.graph.get("params") or {}),
        "hash": graph_hash(graph),
    }
    if graph.graph.get("source"):
        info["source"] = graph.graph["source"]
    return info


def draw(graph: nx.Graph, path: StrPath) -> None:
    """Write a PNG of the topology: server in red, lattice or circle layouts, ranks on small graphs."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # lazy: nodes never draw
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure

    graph = validate(graph)
    n, m = graph.number_of_nodes(), graph.number_of_edges()
    pos = _layout(graph)
    server = graph.graph.get("server")
    fig = Figure(figsize=(7, 7), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.set_aspect("equal")
    straight, stubs = _segments(graph, pos)
    width = 1.2 if m <= 200 else max(0.1, 1.2 * math.sqrt(200 / m))
    alpha = 0.8 if m <= 200 else max(0.05, 0.8 * 200 / m)
    ax.add_collection(LineCollection(straight, colors="0.45", linewidths=width, alpha=alpha, zorder=1))
    if stubs:
        ax.add_collection(LineCollection(stubs, colors="0.45", linewidths=width, linestyles="dashed", zorder=1))
    size = max(6.0, min(320.0, 8000.0 / n))
    workers = [v for v in graph.nodes if v != server]
    xy = np.array([pos[v] for v in workers])
    ax.scatter(xy[:, 0], xy[:, 1], s=size, c="tab:blue", edgecolors="white", linewidths=0.5, zorder=2, label="worker")
    if server is not None:
        sx, sy = pos[server]
        ax.scatter([sx], [sy], s=size * 2.2, c="tab:red", edgecolors="black", linewidths=0.8, zorder=3, label=f"server (rank {server})")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, fontsize=8, frameon=False, markerscale=0.5)
    if n <= LABEL_MAX_NODES:
        for v in graph.nodes:
            ax.annotate(str(v), pos[v], ha="center", va="center", fontsize=7, color="white", zorder=4)
    ax.autoscale_view()
    ax.margins(0.08)
    title = f"{graph.graph.get('name')}: {n} nodes, {m} edges"
    ax.set_title(title + (f", server = rank {server}" if server is not None else ""), fontsize=10)
    try:
        fig.savefig(Path(path), format="png")
    except OSError as exc:
        raise TopologyError(f"cannot write drawing {path}: {exc.strerror or exc}") from None


def _mh_matrix(graph: nx.Graph) -> np.ndarray:
    n = graph.number_of_nodes()
    degree = np.array([d for _, d in sorted(graph.degree())], dtype=float)
    matrix = np.zeros((n, n))
    if graph.number_of_edges():
        u, v = np.array(list(graph.edges()), dtype=np.intp).T
        w = 1.0 / (1.0 + np.maximum(degree[u], degree[v]))
        matrix[u, v] = w
        matrix[v, u] = w
    matrix[np.diag_indices(n)] = 1.0 - matrix.sum(axis=1)
    return matrix


def _diameter(graph: nx.Graph) -> int | None:
    """All-sources BFS run in parallel on bitsets: each node's int holds the sources that reach it.

    One level costs O(m) big-int ORs, so graphs of 1000 nodes take milliseconds, except
    long rings (diameter n/2) that take ~0.4 s; networkx's per-source BFS is 10-100x slower.
    """
    n, m = graph.number_of_nodes(), graph.number_of_edges()
    if m == n * (n - 1) // 2:
        return 1
    if n > DIAMETER_MAX_NODES:
        return None
    everyone = (1 << n) - 1
    neighbours = [list(graph.adj[v]) for v in range(n)]
    reach = [1 << v for v in range(n)]
    level = 0
    while not all(r == everyone for r in reach):
        reach = [reduce(or_, (reach[u] for u in neighbours[v]), reach[v]) for v in range(n)]
        level += 1
    return level


def _layout(graph: nx.Graph) -> dict[int, tuple[float, float]]:
    """Positions that show the structure: lattices on their grid, star hub centred, else a circle."""
    n = graph.number_of_nodes()
    name = graph.graph.get("name")
    params = graph.graph.get("params") or {}
    if name in LATTICES and params.get("rows", 0) * params.get("cols", 0) == n:
        cols = params["cols"]
        return {v: (float(v % cols), -float(v // cols)) for v in graph.nodes}
    if name == "star":
        ring = _circle([v for v in graph.nodes if v != 0])
        return {0: (0.0, 0.0), **ring}
    if name in CIRCLES or n > SPRING_MAX_NODES:
        return _circle(list(graph.nodes))
    layout = nx.spring_layout(graph, seed=0)
    return {v: (float(x), float(y)) for v, (x, y) in layout.items()}


def _circle(nodes: list[int]) -> dict[int, tuple[float, float]]:
    """Ranks clockwise from the top, so rank order reads like a clock face."""
    count = len(nodes)
    return {
        v: (math.sin(2 * math.pi * i / count), math.cos(2 * math.pi * i / count))
        for i, v in enumerate(nodes)
    }


def _segments(graph: nx.Graph, pos: dict[int, tuple[float, float]]) -> tuple[list, list]:
    """Straight edges, plus short dashed stubs for a torus' wrap-around edges (which would overlap)."""
    wrap = graph.graph.get("name") == "torus"
    straight, stubs = [], []
    for u, v in graph.edges():
        (ux, uy), (vx, vy) = pos[u], pos[v]
        if wrap and abs(ux - vx) + abs(uy - vy) > 1.5:
            dx, dy = np.sign(ux - vx) * 0.4, np.sign(uy - vy) * 0.4
            stubs.append([(ux, uy), (ux + dx, uy + dy)])
            stubs.append([(vx, vy), (vx - dx, vy - dy)])
        else:
            straight.append([(ux, uy), (vx, vy)])
    return straight, stubs
