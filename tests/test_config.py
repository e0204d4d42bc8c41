"""Config resolution: defaults < file < flags < --set, with unknown keys and wrong types refused."""

from __future__ import annotations

import tomllib

import pytest

from dsim import config
from dsim.errors import DsimError
from dsim.hosts import layout, parse_hosts
from dsim.plan import format_ranks
from dsim.routing import next_hops
from dsim.topologies import build


def test_precedence_and_nested_set(tmp_path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('nodes = 4\ntopology = "ring"\nalgorithm = "gossip"\n[gossip]\ndim = 7\n[graph]\ndegree = 6\n')
    cfg = config.resolve(f, {"nodes": 5}, ["gossip.dim=9", "net.heartbeat=0.25", "rounds=3"])
    assert (cfg["nodes"], cfg["topology"], cfg["gossip"]["dim"]) == (5, "ring", 9)
    assert (cfg["graph"]["degree"], cfg["net"]["heartbeat"], cfg["rounds"]) == (6, 0.25, 3)
    assert tomllib.loads(config.to_toml(cfg)) == cfg


@pytest.mark.parametrize("assignment, message", [
    ("nope=1", "unknown config key 'nope'"),
    ("graph.nope=1", "unknown config key 'graph.nope'"),
    ("nodes=abc", "expects int"),
    ("graph=3", "is a table"),
    ("nodes", "expects key=value"),
    ("nodes=0", "at least 1"),
    ("net.ports=10-5", "net.ports"),
    ("net.event_loop=trio", "net.event_loop must be one of auto, uvloop, asyncio"),
])
def test_bad_settings_are_one_line_errors(assignment: str, message: str) -> None:
    with pytest.raises(DsimError, match=message):
        config.resolve(None, {"algorithm": "gossip"}, [assignment])


def test_fingerprint_ignores_machine_local_keys_and_names_differences() -> None:
    a = config.resolve(None, {"algorithm": "gossip"}, [])
    b = config.resolve(None, {"algorithm": "gossip", "out": "elsewhere"}, ["rounds=99"])
    assert config.fingerprint(a, "g") != config.fingerprint(b, "g")
    c = config.resolve(None, {"algorithm": "gossip", "out": "elsewhere"}, [])
    assert config.fingerprint(a, "g") == config.fingerprint(c, "g")
    diffs = config.differences(config.fingerprint_view(a), config.fingerprint_view(b))
    assert diffs == ["rounds=99 (here 10)"]


def test_hosts_file_layout(tmp_path) -> None:
    f = tmp_path / "hosts"
    f.write_text("# two machines\n10.0.0.1 slots=3\n\nnode-b slots=2  # comment\n")
    machines = layout(parse_hosts(f), 5)
    assert [(m.host, list(m.ranks)) for m in machines] == [("10.0.0.1", [0, 1, 2]), ("node-b", [3, 4])]
    with pytest.raises(DsimError, match="6 nodes"):
        layout(parse_hosts(f), 6)


@pytest.mark.parametrize("text, message", [
    ("a slots=2\na slots=1\n", "already listed"),
    ("a slots=x\n", "line 1"),
    ("a\n", "expected 'HOST slots=N'"),
    ("a slots=0\n", "at least 1"),
    ("# nothing\n", "no hosts"),
])
def test_bad_hosts_files(tmp_path, text: str, message: str) -> None:
    f = tmp_path / "hosts"
    f.write_text(text)
    with pytest.raises(DsimError, match=message):
        parse_hosts(f)


def test_next_hops_follow_shortest_paths() -> None:
    ring = build("ring", 8)
    hops = next_hops(ring, 0)
    assert hops[1] == 1 and hops[7] == 7 and hops[3] == 1 and hops[5] == 7
    grid = build("grid", 9)
    for src in grid.nodes:
        for dst, hop in next_hops(grid, src).items():
            assert grid.has_edge(src, hop)
            import networkx as nx
            assert nx.shortest_path_length(grid, hop, dst) == nx.shortest_path_length(grid, src, dst) - 1


def test_format_ranks() -> None:
    assert format_ranks([3]) == "node 3"
    assert format_ranks([5, 3, 4, 9]) == "nodes 3-5, 9"


def test_coordinator_refuses_nodes_whose_data_fingerprints_differ() -> None:
    from dsim.console import Console
    from dsim.coordinator import Abort, Coordinator
    from dsim.plan import WorkerPlan

    cfg = config.resolve(None, {"algorithm": "gossip"}, [])
    plans = [WorkerPlan("w0.0", 0, [0, 1]), WorkerPlan("w1.0", 1, [2])]
    coord = Coordinator(cfg, "g", "run", [], plans, 2, [], Console(quiet=True))
    coord.registered = {
        "w0.0": {"data": {0: {"data": "aaaa", "part": "p0"}, 1: {"data": "aaaa", "part": "p1"}}},
        "w1.0": {"data": {2: {"data": "bbbb", "part": "p2"}}},
    }
    with pytest.raises(Abort, match="node 2 computed data fingerprint bbbb but nodes 0-1 computed aaaa") as info:
        coord._check_data()
    assert info.value.status == "refused" and info.value.ranks == [2]
    coord.registered["w1.0"]["data"][2]["data"] = "aaaa"
    coord._check_data()
    assert coord.outcome.data_fingerprint == "aaaa"
