"""Build the named topologies (and edge-list files) as validated rank graphs.

``nodes`` counts worker nodes. A star always has ``nodes + 1`` vertices with the hub, rank 0,
as the server. Every other topology has ``nodes`` vertices, or ``nodes + 1`` with
``with_server=True``: rank 0 is then the server, an ordinary vertex of the topology.
Random topologies are deterministic in ``seed`` and retried with derived seeds until connected.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

from dsim.options import to_dict

from .edgefile import TopologyError, read_edges, validate
from .options import GraphOptions

TOPOLOGIES: tuple[str, ...] = (
    "star", "ring", "full", "regular", "small-world", "erdos-renyi", "grid", "torus",
)
RETRIES = 100
"""Derived seeds tried before a random topology that stays disconnected is refused."""

DEFAULTS: dict[str, Any] = to_dict(GraphOptions())
"""The [graph] table's defaults (declared in topologies/options.py)."""
SAMPLES_DIR = Path(__file__).resolve().parent
"""Sample graph files shipped with the package; a bare file name is also looked up here."""


def build(
    name: str,
    nodes: int,
    *,
    with_server: bool = False,
    seed: int = 0,
    params: Mapping[str, Any] | None = None,
) -> nx.Graph:
    """Build topology ``name`` (one of TOPOLOGIES, or an edge-list file path) over worker ``nodes``.

    ``params`` is the config's [graph] table; unknown keys are ignored. For a file the node
    count comes from the file and ``nodes`` is ignored (the file wins); with ``with_server``
    its rank 0 is the server.
    """
    params = dict(params or {})
    name = os.fspath(name)
    if not _is_int(seed) or seed < 0:
        raise TopologyError(f"topology seed must be a non-negative integer, got {seed!r}")
    file = _graph_file(name, params)
    if file is not None:
        graph = read_edges(file)
        graph.graph.update(server=0 if with_server else None, params={"file": str(file)})
        return graph
    if not _is_int(nodes) or nodes < 1:
        raise TopologyError(f"topology {name!r} needs at least 1 node, got nodes={nodes!r}")
    if name == "star":
        return _finish(nx.star_graph(nodes), name, server=0, params={})
    n = nodes + 1 if with_server else nodes
    if n < 2:
        raise TopologyError(f"topology {name!r} needs at least 2 nodes, got {n}; raise --nodes")
    try:
        graph, used = _BUILDERS[name](n, seed, params)
    except TopologyError as exc:
        if with_server:
            raise TopologyError(f"{exc} (node counts include the server, rank 0)") from None
        raise
    return _finish(graph, name, server=0 if with_server else None, params=used)


def _graph_file(name: str, params: dict[str, Any]) -> Path | None:
    """The edge-list file named by ``name`` (or params['file'] when name is 'file'), else None."""
    if name in TOPOLOGIES:
        return None
    if name == "file":
        if not params.get("file"):
            raise TopologyError("topology 'file' needs graph.file, the path of an edge-list file")
        name = os.fspath(params["file"])
    path = Path(name)
    if path.is_file():
        return path
    sample = SAMPLES_DIR / name
    if path.name == name and name.endswith(".edges") and sample.is_file():
        return sample
    if path.suffix or os.sep in name or "/" in name:
        raise TopologyError(f"edge file {name} not found")
    raise TopologyError(
        f"unknown topology {name!r}; choose one of {', '.join(TOPOLOGIES)} or give an edge-list file"
    )


def _finish(graph: nx.Graph, name: str, *, server: int | None, params: dict[str, Any]) -> nx.Graph:
    graph.graph.clear()
    graph.graph.update(name=name, server=server, params=params)
    return validate(graph)


# --- parameters ----------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _opt(key: str) -> str:
    """How a parameter is spelled in the config and on the command line, for error messages."""
    return f"graph.{key} (--{key})"


def _int_param(params: Mapping[str, Any], key: str, minimum: int) -> int:
    value = params.get(key, DEFAULTS[key])
    if not _is_int(value) or value < minimum:
        raise TopologyError(f"{_opt(key)} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _prob_param(params: Mapping[str, Any], key: str) -> float:
    value = params.get(key, DEFAULTS[key])
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise TopologyError(f"{_opt(key)} must be a probability in [0, 1], got {value!r}")
    return float(value)


# --- deterministic shapes --------------------------------------------------------------------


def _ring(n: int, seed: int, params: Mapping[str, Any]) -> tuple[nx.Graph, dict[str, Any]]:
    return nx.cycle_graph(n), {}


def _full(n: int, seed: int, params: Mapping[str, Any]) -> tuple[nx.Graph, dict[str, Any]]:
    return nx.complete_graph(n), {}


def _grid(n: int, seed: int, params: Mapping[str, Any]) -> tuple[nx.Graph, dict[str, Any]]:
    rows, cols = _shape(n, _int_param(params, "rows", 0), "grid", minimum=1)
    return _lattice(rows, cols, wrap=False), {"rows": rows, "cols": cols}


def _torus(n: int, seed: int, params: Mapping[str, Any]) -> tuple[nx.Graph, dict[str, Any]]:
    rows, cols = _shape(n, _int_param(params, "rows", 0), "torus", minimum=3)
    return _lattice(rows, cols, wrap=True), {"rows": rows, "cols": cols}


def _shape(n: int, rows: int, name: str, *, minimum: int) -> tuple[int, int]:
    """rows x cols == n with both sides >= minimum; rows=0 picks the most square such shape.

    A torus needs 3 rows and 3 columns: with 2 the wrap-around edge repeats an existing one.
    """
    if rows:
        if n % rows or min(rows, n // rows) < minimum:
            raise TopologyError(
                f"{name} cannot have {rows} rows with {n} nodes: {_opt('rows')} must divide the node count"
                + (f" and leave at least {minimum} rows and columns" if minimum > 1 else "")
            )
        return rows, n // rows
    shapes = [(r, n // r) for r in range(1, math.isqrt(n) + 1) if n % r == 0 and r >= minimum]
    if not shapes:
        raise TopologyError(
            f"{name} with {n} nodes has no shape with at least {minimum} rows and columns; "
            "use a node count such as 9, 12 or 16"
        )
    return shapes[-1]


def _lattice(rows: int, cols: int, *, wrap: bool) -> nx.Graph:
    """Row-major ranks (rank = row * cols + col) so a lattice drawing follows the ranks."""
    edges: list[tuple[int, int]] = []
    for r in range(rows):
        for c in range(cols):
            v = r * cols + c
            if c + 1 < cols:
                edges.append((v, v + 1))
            elif wrap:
                edges.append((r * cols, v))
            if r + 1 < rows:
                edges.append((v, v + cols))
            elif wrap:
                edges.append((c, v))
    graph = nx.Graph()
    graph.add_nodes_from(range(rows * cols))
    graph.add_edges_from(sorted(edges))
    return graph


# --- random shapes ---------------------------------------------------------------------------


def _connected(make: Callable[[int], nx.Graph], seed: int, what: str, hint: str) -> nx.Graph:
    """First connected graph among RETRIES seeds derived from ``seed`` (deterministic)."""
    for attempt in range(RETRIES):
        derived = int(np.random.SeedSequence([seed, attempt]).generate_state(1)[0])
        graph = make(derived)
        if nx.is_connected(graph):
            return graph
    raise TopologyError(f"{what} was disconnected in {RETRIES} tries; {hint}")


def _regular(n: int, seed: int, params: Mapping[str, Any]) -> tuple[nx.Graph, dict[str, Any]]:
    d = _int_param(params, "degree", 1)
    if d >= n or (n * d) % 2:
        raise TopologyError(
            f"regular topology impossible with {n} nodes and degree {d}: {_opt('degree')} must be "
            f"below the node count, with nodes * degree even"
        )
    if d == 1 and n > 2:
        raise TopologyError(f"a 1-regular graph on {n} nodes is disconnected; raise {_opt('degree')}")
    if d == 2:
        make = lambda s: _random_cycle(n, s)  # noqa: E731 - the only connected 2-regular graphs
    elif 2 * d > n - 1:
        # The complement of a uniform (n-1-d)-regular graph is a uniform d-regular one, far cheaper.
        make = lambda s: nx.complement(nx.random_regular_graph(n - 1 - d, n, seed=s))  # noqa: E731
    else:
        make = lambda s: nx.random_regular_graph(d, n, seed=s)  # noqa: E731
    graph = _connected(make, seed, f"regular with {n} nodes and degree {d}", f"raise {_opt('degree')}")
    return _sorted_copy(graph), {"degree": d}


def _random_cycle(n: int, seed: int) -> nx.Graph:
    order = np.random.default_rng(seed).permutation(n).tolist()
    graph = nx.Graph()
    graph.add_nodes_from(range(n))
    graph.add_edges_from(zip(order, order[1:] + order[:1], strict=True))
    return graph


def _small_world(n: int, seed: int, params: Mapping[str, Any]) -> tuple[nx.Graph, dict[str, Any]]:
    k = _int_param(params, "k", 2)
    rewire = _prob_param(params, "rewire")
    if k % 2 or k >= n:
        raise TopologyError(
            f"small-world {_opt('k')}={k} must be even and below the node count {n} "
            f"(k/2 ring neighbours on each side)"
        )
    graph = _connected(
        lambda s: nx.watts_strogatz_graph(n, k, rewire, seed=s),
        seed,
        f"small-world with {n} nodes, k={k} and rewire={rewire}",
        f"lower {_opt('rewire')} or raise {_opt('k')}",
    )
    return _sorted_copy(graph), {"k": k, "rewire": rewire}


def _erdos_renyi(n: int, seed: int, params: Mapping[str, Any]) -> tuple[nx.Graph, dict[str, Any]]:
    p = _prob_param(params, "p") or min(1.0, 2.0 * math.log(n) / n)
    graph = _connected(
        lambda s: nx.fast_gnp_random_graph(n, p, seed=s),
        seed,
        f"erdos-renyi with {n} nodes and p={p:g}",
        f"raise {_opt('p')}",
    )
    return _sorted_copy(graph), {"p": p}


def _sorted_copy(graph: nx.Graph) -> nx.Graph:
    """Nodes 0..n-1 in order and each adjacency sorted, so iteration order never depends on the RNG."""
    copy = nx.Graph()
    copy.add_nodes_from(range(graph.number_of_nodes()))
    copy.add_edges_from(sorted((u, v) if u < v else (v, u) for u, v in graph.edges()))
    return copy


_BUILDERS: dict[str, Callable[[int, int, Mapping[str, Any]], tuple[nx.Graph, dict[str, Any]]]] = {
    "ring": _ring,
    "full": _full,
    "regular": _regular,
    "small-world": _small_world,
    "erdos-renyi": _erdos_renyi,
    "grid": _grid,
    "torus": _torus,
}
