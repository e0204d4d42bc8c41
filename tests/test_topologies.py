"""dsim.topologies: builders, edge files, validation, summary, weights, drawing."""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from pathlib import Path

import matplotlib.image
import networkx as nx
import numpy as np
import pytest

from dsim.errors import DsimError
from dsim.topologies import (
    TOPOLOGIES,
    TopologyError,
    build,
    draw,
    graph_hash,
    metropolis_hastings_weights,
    read_edges,
    spectral_gap,
    summary,
    validate,
    write_edges,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SAMPLE = Path(__file__).resolve().parents[1] / "topologies" / "example-8.edges"


def edge_set(graph: nx.Graph) -> set[tuple[int, int]]:
    return {(min(u, v), max(u, v)) for u, v in graph.edges()}


def degrees(graph: nx.Graph) -> list[int]:
    return [d for _, d in graph.degree()]


def write(tmp_path: Path, text: str, name: str = "g.edges") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- shapes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TOPOLOGIES)
@pytest.mark.parametrize("with_server", [False, True])
def test_every_topology_obeys_the_invariants(name: str, with_server: bool) -> None:
    graph = build(name, 15, with_server=with_server, seed=3)
    n = 16 if (with_server or name == "star") else 15
    assert list(graph.nodes) == list(range(n))
    assert nx.is_connected(graph)
    assert nx.number_of_selfloops(graph) == 0
    assert not graph.is_directed()
    assert graph.graph["name"] == name
    expected_server = 0 if (with_server or name == "star") else None
    assert graph.graph["server"] == expected_server


@pytest.mark.parametrize("name", TOPOLOGIES)
def test_builds_are_deterministic_in_seed(name: str) -> None:
    first = build(name, 30, seed=7)
    again = build(name, 30, seed=7)
    assert edge_set(first) == edge_set(again)
    assert graph_hash(first) == graph_hash(again)
    assert [list(first.adj[v]) for v in first] == [list(again.adj[v]) for v in again]


@pytest.mark.parametrize("name", ["regular", "small-world", "erdos-renyi"])
def test_random_topologies_change_with_seed(name: str) -> None:
    hashes = {graph_hash(build(name, 30, seed=seed)) for seed in range(5)}
    assert len(hashes) > 1


def test_ring() -> None:
    graph = build("ring", 10)
    assert graph.number_of_edges() == 10
    assert set(degrees(graph)) == {2}
    assert all(graph.has_edge(i, (i + 1) % 10) for i in range(10))


def test_ring_with_server_puts_the_server_on_the_ring() -> None:
    graph = build("ring", 10, with_server=True)
    assert graph.number_of_nodes() == 11
    assert graph.graph["server"] == 0
    assert set(degrees(graph)) == {2}


def test_star_hub_is_the_server_whatever_with_server_says() -> None:
    for with_server in (False, True):
        graph = build("star", 10, with_server=with_server)
        assert graph.number_of_nodes() == 11
        assert graph.graph["server"] == 0
        assert graph.degree(0) == 10
        assert all(graph.degree(v) == 1 and graph.has_edge(0, v) for v in range(1, 11))


def test_full() -> None:
    graph = build("full", 9)
    assert graph.number_of_edges() == 9 * 8 // 2
    assert set(degrees(graph)) == {8}


@pytest.mark.parametrize(("n", "d"), [(10, 2), (10, 3), (12, 4), (12, 8), (11, 10), (2, 1)])
def test_regular_degrees(n: int, d: int) -> None:
    graph = build("regular", n, params={"degree": d}, seed=1)
    assert graph.number_of_nodes() == n
    assert set(degrees(graph)) == {d}
    assert nx.is_connected(graph)
    assert graph.graph["params"] == {"degree": d}


def test_regular_default_degree_is_4() -> None:
    assert set(degrees(build("regular", 20))) == {4}


def test_small_world_edges_and_zero_rewire_is_a_ring_lattice() -> None:
    graph = build("small-world", 20, params={"k": 6, "rewire": 0.3}, seed=2)
    assert graph.number_of_edges() == 20 * 6 // 2
    lattice = build("small-world", 20, params={"k": 4, "rewire": 0.0})
    assert set(degrees(lattice)) == {4}
    assert all(lattice.has_edge(i, (i + 1) % 20) and lattice.has_edge(i, (i + 2) % 20) for i in range(20))


def test_erdos_renyi_auto_p_and_explicit_p() -> None:
    graph = build("erdos-renyi", 50, seed=4)
    assert graph.graph["params"]["p"] == pytest.approx(2 * math.log(50) / 50)
    same_as_auto = build("erdos-renyi", 50, seed=4, params={"p": 0})
    assert edge_set(same_as_auto) == edge_set(graph)
    complete = build("erdos-renyi", 12, params={"p": 1.0})
    assert complete.number_of_edges() == 12 * 11 // 2


def grid_degree_counts(rows: int, cols: int) -> Counter:
    return Counter({2: 4, 3: 2 * (rows - 2) + 2 * (cols - 2), 4: (rows - 2) * (cols - 2)})


def test_grid_most_square_and_row_major() -> None:
    graph = build("grid", 12)
    assert graph.graph["params"] == {"rows": 3, "cols": 4}
    assert graph.number_of_edges() == 3 * 3 + 4 * 2
    assert Counter(degrees(graph)) == grid_degree_counts(3, 4)
    assert graph.has_edge(0, 1) and graph.has_edge(0, 4) and not graph.has_edge(3, 4)


def test_grid_rows_param_and_prime_count_is_a_path() -> None:
    graph = build("grid", 12, params={"rows": 2})
    assert graph.graph["params"] == {"rows": 2, "cols": 6}
    assert Counter(degrees(graph)) == Counter({2: 4, 3: 8})
    path = build("grid", 7)
    assert graph_hash(path) == graph_hash(nx.path_graph(7))


def test_torus_is_4_regular_with_wraparound() -> None:
    graph = build("torus", 12)
    assert graph.graph["params"] == {"rows": 3, "cols": 4}
    assert set(degrees(graph)) == {4}
    assert graph.number_of_edges() == 24
    assert graph.has_edge(0, 3) and graph.has_edge(0, 8)
    small = build("torus", 9)
    assert set(degrees(small)) == {4} and small.number_of_edges() == 18


def test_with_server_counts_the_server_as_a_vertex() -> None:
    graph = build("grid", 11, with_server=True)
    assert graph.number_of_nodes() == 12
    assert graph.graph["params"] == {"rows": 3, "cols": 4}
    assert graph.graph["server"] == 0


@pytest.mark.parametrize("name", TOPOLOGIES)
def test_1000_node_builds(name: str) -> None:
    graph = build(name, 1000, seed=1)
    n = 1001 if name == "star" else 1000
    assert list(graph.nodes) == list(range(n))
    assert nx.is_connected(graph)
    if name in ("ring", "regular", "torus"):
        assert len(set(degrees(graph))) == 1


# --- refused requests -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "nodes", "kwargs", "needle"),
    [
        ("rnig", 5, {}, "choose one of star, ring, full"),
        ("ring", 1, {}, "at least 2 nodes"),
        ("ring", 0, {}, "at least 1 node"),
        ("star", 0, {}, "at least 1 node"),
        ("regular", 7, {"params": {"degree": 3}}, "nodes * degree even"),
        ("regular", 5, {"params": {"degree": 5}}, "below the node count"),
        ("regular", 6, {"params": {"degree": 1}}, "disconnected"),
        ("regular", 6, {"params": {"degree": 2.5}}, "graph.degree (--degree) must be an integer"),
        ("small-world", 10, {"params": {"k": 3}}, "must be even"),
        ("small-world", 10, {"params": {"rewire": 1.5}}, "probability"),
        ("erdos-renyi", 10, {"params": {"p": -0.1}}, "probability"),
        ("erdos-renyi", 10, {"params": {"p": True}}, "probability"),
        ("grid", 12, {"params": {"rows": 5}}, "must divide"),
        ("torus", 7, {}, "no shape with at least 3 rows"),
        ("torus", 12, {"params": {"rows": 2}}, "at least 3 rows"),
        ("torus", 10, {"with_server": True}, "include the server"),
        ("ring", 5, {"seed": -1}, "seed"),
        ("file", 5, {}, "needs graph.file"),
        ("missing/graph.edges", 5, {}, "not found"),
    ],
)
def test_impossible_requests_raise_one_line(name: str, nodes: int, kwargs: dict, needle: str) -> None:
    with pytest.raises(TopologyError) as info:
        build(name, nodes, **kwargs)
    message = str(info.value)
    assert needle in message
    assert "\n" not in message
    assert isinstance(info.value, DsimError)


def test_disconnected_random_graph_says_what_to_change() -> None:
    with pytest.raises(TopologyError, match=r"erdos-renyi with 50 nodes and p=0.01 was disconnected in 100 tries; raise graph.p"):
        build("erdos-renyi", 50, params={"p": 0.01})


def test_unknown_params_are_ignored() -> None:
    graph = build("ring", 6, params={"topology": "ring", "degree": 3, "rows": 0})
    assert set(degrees(graph)) == {2}


# --- edge files -----------------------------------------------------------------------------


def test_round_trip_and_hash_is_the_file_sha256(tmp_path: Path) -> None:
    graph = build("small-world", 25, seed=5)
    path = tmp_path / "sw.edges"
    write_edges(graph, path)
    text = path.read_text()
    lines = text.splitlines()
    assert lines[0] == "25"
    assert len(lines) == 1 + graph.number_of_edges()
    back = read_edges(path)
    assert edge_set(back) == edge_set(graph)
    assert list(back.nodes) == list(range(25))
    assert graph_hash(back) == graph_hash(graph) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_reads_decentralizepy_style_with_both_directions_comments_and_blanks(tmp_path: Path) -> None:
    path = write(tmp_path, "# a triangle plus a tail\n4\n0 1\n1 0\n\n1 2  # trailing\n2 0\n2 3\n3 2\n")
    graph = read_edges(path)
    assert edge_set(graph) == {(0, 1), (1, 2), (0, 2), (2, 3)}
    assert graph.graph["name"] == "file" and graph.graph["server"] is None


def test_hash_ignores_edge_order_and_direction() -> None:
    a = nx.Graph([(0, 1), (1, 2), (2, 3)])
    b = nx.Graph()
    b.add_nodes_from(range(4))
    b.add_edges_from([(3, 2), (2, 1), (1, 0)])
    assert graph_hash(a) == graph_hash(b)
    assert graph_hash(a) != graph_hash(nx.Graph([(0, 1), (1, 2), (1, 3)]))


@pytest.mark.parametrize(
    ("text", "where", "needle"),
    [
        ("", "", "empty file"),
        ("# only a comment\n", "", "empty file"),
        ("eight\n0 1\n", ":1:", "number of nodes"),
        ("4 5\n0 1\n", ":1:", "number of nodes"),
        ("1\n", ":1:", "at least 2 nodes"),
        ("3\n0 1\n1 x\n", ":3:", "two integers"),
        ("3\n0 1\n1 2 0\n", ":3:", "two integers"),
        ("3\n0 1\n1.0 2\n", ":3:", "two integers"),
        ("3\n0 1\n\n# c\n1 3\n", ":5:", "node 3 is out of range 0..2"),
        ("3\n0 1\n-1 2\n", ":3:", "node -1 is out of range"),
        ("3\n0 1\n2 2\n", ":3:", "self loop on node 2"),
        ("4\n0 1\n2 3\n", "", "disconnected"),
        ("3\n0 1\n", "", "node 2 cannot be reached"),
    ],
)
def test_malformed_files_name_file_and_line(tmp_path: Path, text: str, where: str, needle: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(TopologyError) as info:
        read_edges(path)
    message = str(info.value)
    assert str(path) + where in message
    assert needle in message
    assert "\n" not in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match="not found"):
        read_edges(tmp_path / "nope.edges")


def test_build_from_file_path_the_file_wins(tmp_path: Path) -> None:
    path = write(tmp_path, "5\n0 1\n1 2\n2 3\n3 4\n")
    graph = build(str(path), 99)
    assert graph.number_of_nodes() == 5
    assert graph.graph["server"] is None
    served = build(str(path), 3, with_server=True)
    assert served.graph["server"] == 0 and served.number_of_nodes() == 5
    via_param = build("file", 0, params={"file": str(path)})
    assert edge_set(via_param) == edge_set(graph)


def test_sample_file_by_bare_name_is_the_3_cube() -> None:
    graph = build("example-8.edges", 0)
    assert graph_hash(graph) == graph_hash(read_edges(SAMPLE))
    assert set(degrees(graph)) == {3}
    assert all(bin(u ^ v).count("1") == 1 for u, v in graph.edges())


def test_write_to_unwritable_place(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match="cannot write edge file"):
        write_edges(build("ring", 4), tmp_path / "no-such-dir" / "g.edges")


# --- validate -------------------------------------------------------------------------------


def test_validate_returns_sorted_canonical_copy() -> None:
    graph = nx.Graph()
    graph.add_nodes_from([2, 0, 1])
    graph.add_edges_from([(2, 0), (0, 1)])
    checked = validate(graph)
    assert list(checked.nodes) == [0, 1, 2]
    assert edge_set(checked) == {(0, 2), (0, 1)}
    assert checked.graph["server"] is None and checked.graph["name"] == "custom"


@pytest.mark.parametrize(
    ("graph", "needle"),
    [
        (nx.Graph([("a", "b")]), "ranks 0..1"),
        (nx.Graph([(1, 2)]), "ranks 0..1"),
        (nx.Graph([(0, 1), (1, 1)]), "self loop"),
        (nx.path_graph(1), "at least 2 nodes"),
        (nx.DiGraph([(0, 1)]), "undirected"),
        (nx.MultiGraph([(0, 1)]), "undirected"),
        (nx.Graph([(0, 1), (2, 3)]), "disconnected"),
        (nx.Graph([(0, 1)], server=5), "server must be"),
    ],
)
def test_validate_refuses(graph: nx.Graph, needle: str) -> None:
    with pytest.raises(TopologyError, match=needle):
        validate(graph)


# --- weights and summary --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["star", "erdos-renyi", "grid", "small-world"])
def test_mh_weights_are_symmetric_doubly_stochastic(name: str) -> None:
    graph = build(name, 20, seed=2, with_server=True)
    weights = metropolis_hastings_weights(graph)
    assert set(weights) == set(graph.nodes)
    for i, row in weights.items():
        assert set(row) == set(graph.adj[i]) | {i}
        assert math.fsum(row.values()) == pytest.approx(1.0, abs=1e-12)
        assert all(w >= 0 for w in row.values())
        for j, w in row.items():
            assert weights[j][i] == w
    for j in graph.nodes:
        assert math.fsum(weights[i].get(j, 0.0) for i in graph.nodes) == pytest.approx(1.0, abs=1e-12)


def test_mh_weight_values_on_a_star() -> None:
    weights = metropolis_hastings_weights(build("star", 4))
    assert weights[1] == {0: pytest.approx(1 / 5), 1: pytest.approx(4 / 5)}
    assert weights[0][0] == pytest.approx(1 / 5)


def test_spectral_gap_matches_the_ring_formula_and_orders_topologies() -> None:
    n = 12
    expected = 2 / 3 * (1 - math.cos(2 * math.pi / n))
    assert spectral_gap(build("ring", n)) == pytest.approx(expected, abs=1e-9)
    assert spectral_gap(build("full", n)) == pytest.approx(1.0, abs=1e-9)
    assert spectral_gap(build("ring", 24)) < spectral_gap(build("ring", 12)) < spectral_gap(build("torus", 12))


def test_summary_facts() -> None:
    info = summary(build("grid", 20, with_server=True))
    assert info["nodes"] == 21 and info["workers"] == 20 and info["server"] == 0
    assert info["params"] == {"rows": 3, "cols": 7}
    assert info["edges"] == 3 * 6 + 7 * 2
    assert info["degree"] == {"min": 2, "max": 4, "mean": pytest.approx(2 * info["edges"] / 21)}
    assert info["diameter"] == 2 + 6
    assert 0 < info["spectral_gap"] < 1
    assert info["hash"] == graph_hash(build("grid", 20, with_server=True))


@pytest.mark.parametrize(
    ("name", "nodes", "diameter"),
    [("ring", 11, 5), ("ring", 12, 6), ("star", 9, 2), ("full", 10, 1), ("torus", 20, 2 + 2)],
)
def test_summary_diameter_of_known_shapes(name: str, nodes: int, diameter: int) -> None:
    assert summary(build(name, nodes))["diameter"] == diameter


@pytest.mark.parametrize("seed", range(4))
def test_summary_diameter_matches_networkx(seed: int) -> None:
    for name in ("erdos-renyi", "small-world", "regular"):
        graph = build(name, 60, seed=seed)
        assert summary(graph)["diameter"] == nx.diameter(graph)


# --- drawing --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "nodes", "with_server"),
    [("ring", 10, True), ("torus", 16, False), ("star", 8, False), ("erdos-renyi", 30, False), ("ring", 400, False)],
)
def test_draw_writes_a_readable_png(tmp_path: Path, name: str, nodes: int, with_server: bool) -> None:
    path = tmp_path / f"{name}.png"
    draw(build(name, nodes, with_server=with_server), path)
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert np.ptp(image[..., :3]) > 0  # not a blank canvas


def test_draw_marks_the_server_in_red(tmp_path: Path) -> None:
    plain, served = tmp_path / "plain.png", tmp_path / "served.png"
    draw(build("ring", 10), plain)
    draw(build("ring", 9, with_server=True), served)

    def red_pixels(path: Path) -> int:
        rgb = matplotlib.image.imread(path)[..., :3]
        return int(np.sum((rgb[..., 0] > 0.7) & (rgb[..., 1] < 0.3) & (rgb[..., 2] < 0.3)))

    assert red_pixels(plain) == 0
    assert red_pixels(served) > 50


def test_draw_to_unwritable_place(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match="cannot write drawing"):
        draw(build("ring", 4), tmp_path / "missing" / "x.png")
