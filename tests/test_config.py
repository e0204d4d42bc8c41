"""Config resolution: defaults < file < flags < --set, with unknown keys and wrong types refused."""

from __future__ import annotations

import tomllib

import pytest

from dsim import config
from dsim.errors import DsimError
from dsim.hosts import layout, parse_hosts
from dsim.options import fields, to_dict
from dsim.plan import format_ranks
from dsim.programs import PROGRAMS
from dsim.routing import next_hops
from dsim.topologies import build


def test_precedence_and_nested_set(tmp_path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('nodes = 4\ntopology = "ring"\nalgorithm = "gossip"\n[gossip]\ndim = 7\n[graph]\ndegree = 6\n')
    cfg = config.resolve(str(f), {"nodes": 5}, ["gossip.dim=9", "net.heartbeat=0.25", "rounds=3"])
    assert (cfg.nodes, cfg.topology, cfg.gossip.dim, cfg.program_options.dim) == (5, "ring", 9, 9)
    assert (cfg.graph.degree, cfg.net.heartbeat, cfg.rounds) == (6, 0.25, 3)
    # config.toml holds every resolved value (with docs as comments) and reads back to the same config
    assert tomllib.loads(config.to_toml(cfg)) == to_dict(cfg)
    saved = tmp_path / "saved.toml"
    saved.write_text(config.to_toml(cfg))
    assert config.resolve(str(saved)) == cfg


def test_flags_override_the_file_and_sets_override_flags(tmp_path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('algorithm = "collabdm"\n[dm]\nipc = 20\n[data]\nbeta = 0.3\npartition = "dirichlet"\n')
    cfg = config.resolve(str(f), {"data": {"beta": 0.1, "dataset": None}}, ["data.beta=0.2"])
    assert (cfg.dm.ipc, cfg.data.partition, cfg.data.beta, cfg.data.dataset) == (20, "dirichlet", 0.2, "digits")
    assert config.resolve(None, {"algorithm": "fedavg"}, ["algorithm=gossip"]).algorithm == "gossip"


# Ten bad values across programs and tables: each is refused while resolving, before anything starts.
BAD_VALUES = [
    ("mtt", "mtt.mode=foo", "config key 'mtt.mode' must be one of base, distilled, got 'foo'"),
    ("fedavg", "fedavg.participation=0", "config key 'fedavg.participation' expects float > 0.0, got 0"),
    ("collabdm", "dm.lr=-1", "config key 'dm.lr' expects float > 0.0, got -1"),
    ("gossip", "gossip.dim=0", "config key 'gossip.dim' expects int >= 1, got 0"),
    ("collabdm", "data.beta=0", "config key 'data.beta' expects float > 0.0, got 0"),
    ("localdm", "dm.nope=3", "unknown config key 'dm.nope'"),
    ("dpsgd", "dpsgd.local_epochs=0", r"in \[dpsgd\]: need local_steps > 0 or local_epochs > 0"),
    ("mtt", "mtt.grid_sgd=[0.01, -1]", r"config key 'mtt.grid_sgd.1' expects float > 0.0, got -1"),
    ("exchange", "exchange.bytes=1023", "config key 'exchange.bytes' expects int that's a multiple of 4, got 1023"),
    ("gossip", "net.heartbeat=100", r"in \[net\]: heartbeat \(100 s\) must be smaller than heartbeat_timeout"),
    ("fedavg", "fedavg.model=convnet_bn", "keeps buffers"),
    ("collabdm", "data.partition=bogus", "config key 'data.partition' must be one of"),
    ("gather", "nope=1", "unknown config key 'nope'"),
    ("gather", "graph.nope=1", "unknown config key 'graph.nope'"),
    ("gather", "nodes=abc", "config key 'nodes' expects int, got 'abc'"),
    ("gather", "graph=3", "config key 'graph' is a table"),
    ("gather", "nodes", "expects key=value"),
    ("gather", "nodes=0", "config key 'nodes' expects int >= 1, got 0"),
    ("gather", "net.ports=10-5", "net.ports"),
    ("gather", "net.event_loop=trio", "config key 'net.event_loop' must be one of asyncio, auto, uvloop"),
    ("gather", "device=tpu", "config key 'device'"),
]


@pytest.mark.parametrize("algorithm, assignment, message", BAD_VALUES)
def test_bad_settings_are_one_line_errors(algorithm: str, assignment: str, message: str) -> None:
    with pytest.raises(DsimError, match=message) as info:
        config.resolve(None, {"algorithm": algorithm}, [assignment])
    assert "\n" not in str(info.value)


def test_every_key_of_every_program_is_documented() -> None:
    for name in PROGRAMS:
        cfg = config.resolve(None, {"algorithm": name})
        tables = [cfg, cfg.net, cfg.graph, cfg.data] + ([cfg.program_options] if cfg.program_options else [])
        for table in tables:
            for field in fields(type(table)):
                assert field.doc, f"{name}: {type(table).__name__}.{field.name} has no doc"


def test_model_presets_of_the_options_are_the_ml_library_presets() -> None:
    from typing import get_args

    from dsim.ml.models import MODEL_PRESETS
    from dsim.nodes.options import ModelPreset

    assert set(get_args(ModelPreset)) == set(MODEL_PRESETS)


def test_fingerprint_ignores_machine_local_keys_and_names_differences() -> None:
    a = config.resolve(None, {"algorithm": "gossip"}, [])
    b = config.resolve(None, {"algorithm": "gossip", "out": "elsewhere"}, ["rounds=99"])
    assert config.fingerprint(a, "g") != config.fingerprint(b, "g")
    c = config.resolve(None, {"algorithm": "gossip", "out": "elsewhere", "device": "cpu"}, [])
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
