"""Emulated links ([links]): units and refusals, the link table, one link's timing, and the runtime
applying them on every path (sockets, packed nodes in memory, relays) with their accounting.

Times are measured by the receiver against the sender's send timestamp (tests/testprogs/timed.py, one
machine's monotonic clock) and only ever checked from below: emulated time is a floor, and a busy
machine only adds to it.
"""

from __future__ import annotations

import math
import os
import subprocess
from pathlib import Path

import networkx as nx
import numpy as np
import pytest

from conftest import REPO, dsim_script, node_events, read_csv, summary
from dsim import wire
from dsim.config import resolve
from dsim.errors import DsimError
from dsim.links import Link, LinksOptions, LinkSpec, build_links, parse_duration, parse_rate
from dsim.nodes.exchange import KIND as EXCHANGE
from dsim.options import convert
from dsim.results import BANDWIDTH_COLUMNS, LINK_COLUMNS
from dsim.testing import ProgramFailed, run_program
from dsim.transport import Endpoint
from testprogs.timed import PROGRAM as TIMED

MB = 1_000_000
OLD_COLUMNS = ["rank", "role", "host", "bytes_sent", "bytes_recv", "msgs_sent", "msgs_recv", "bytes_relayed"]


def launch(tmp_path: Path, *args: str, sets: list[str] = (), cwd: Path | None = None,
           out: bool = True) -> tuple[subprocess.CompletedProcess, Path]:
    """A real `dsim launch` (processes and sockets) of a test program; returns it and its run dir."""
    run_dir = tmp_path / "run"
    cmd = [dsim_script(), "launch", *args, *(["--out", str(run_dir)] if out else [])]
    for s in sets:
        cmd += ["--set", s]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=cwd,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(
                             [str(REPO / "tests"), *filter(None, [os.environ.get("PYTHONPATH")])])})
    return res, run_dir


def timed(tmp_path: Path, topology: str, nodes: int, per_process: int, sets: list[str]) -> dict:
    res, run_dir = launch(tmp_path, "--nodes", str(nodes), "--topology", topology, "--algorithm", "testprogs.timed",
                          "--nodes-per-process", str(per_process), "--quiet", sets=["timeout=30", *sets])
    assert res.returncode == 0, res.stderr
    assert summary(run_dir)["warnings"] == []  # nothing left in flight: termination saw every loss
    return summary(run_dir) | {"rows": {int(r["rank"]): r for r in read_csv(run_dir / "bandwidth.csv")},
                               "run_dir": run_dir}


# --- units and refusals --------------------------------------------------------------------------


@pytest.mark.parametrize("text, rate", [
    ("10Mbit", 10e6 / 8), ("1Gbit", 1e9 / 8), ("500kbit", 500e3 / 8), ("2MB", 2e6), ("5Mbps", 5e6 / 8),
    ("10MB/s", 10e6), ("8bit", 1.0), ("", math.inf), ("inf", math.inf), (math.inf, math.inf)])
def test_rates_are_bits_or_bytes_per_second_with_si_prefixes(text, rate) -> None:
    assert parse_rate(text) == pytest.approx(rate)


@pytest.mark.parametrize("text, seconds", [("20ms", 0.02), ("0.5s", 0.5), ("100us", 1e-4), ("0", 0.0),
                                           ("", 0.0), (0, 0.0), ("3ns", 3e-9)])
def test_durations_carry_their_unit(text, seconds) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("sets, message", [
    (["links.bandwidth=10Mbits"], r"in \[links\]: bandwidth = '10Mbits': unknown unit 'Mbits'"),
    (["links.bandwidth=10"], r"bandwidth = 10\.0: no unit"),
    (["links.bandwidth=-5Mbit"], r"bandwidth = '-5Mbit': negative"),
    (["links.bandwidth=0Mbit"], r"a rate must be > 0"),
    (["links.latency=20"], r"latency = 20\.0: no unit"),
    (["links.jitter=3m"], r"jitter = '3m': unknown unit 'm'"),
    (["links.loss=1.5"], r"config key 'links.loss' expects float <= 1.0, got 1.5"),
    (["links.client.loss=2"], r"in \[links.client\]: loss = 2\.0: a loss probability must lie in \[0, 1\]"),
    (["links.server.up=fast"], r"in \[links.server\]: up = 'fast': not a rate"),
    (["links.heterogeneity=pareto"], r"must be one of lognormal, none, uniform"),
    (["links.heterogeneity=uniform", "links.sigma=1"], r"sigma must be < 1"),
    (["links.nope=1"], r"unknown config key 'links.nope'"),
])
def test_a_bad_link_setting_is_refused_while_resolving(sets, message) -> None:
    with pytest.raises(DsimError, match=message):
        resolve(None, {"algorithm": "gossip"}, sets)


# --- the link table ------------------------------------------------------------------------------


def _table(graph: nx.Graph, roles: dict[int, str] | None = None, seed: int = 0, **options):
    opts = convert(LinksOptions, options, "links")
    return build_links(opts, graph, seed, lambda r: (roles or {}).get(r, "client"))


def test_a_link_takes_the_min_of_uplink_and_downlink_and_the_sender_s_latency_and_loss() -> None:
    star = nx.star_graph(3)
    table = _table(star, {0: "server"}, bandwidth="100Mbit", latency="10ms",
                   client={"up": "5Mbit", "latency": "30ms", "loss": 0.1}, server={"down": "1Mbit"})
    assert table.spec(1, 0) == LinkSpec(rate=1e6 / 8, latency=0.03, loss=0.1)  # client up 5, server down 1
    assert table.spec(0, 1) == LinkSpec(rate=100e6 / 8, latency=0.01)  # server up 100, client down 100
    assert table.spec(2, 0).cost == pytest.approx(8e-6)  # seconds per byte


def test_the_links_file_sets_nodes_and_directed_edges_and_empty_cells_inherit(tmp_path) -> None:
    f = tmp_path / "links.csv"
    f.write_text("src,dst,bandwidth,latency,jitter,loss\n"
                 "1,,2Mbit,5ms,,\n"  # node 1's uplink and its links' latency
                 ",2,1Mbit,,,\n"  # node 2's downlink
                 "0,3,,50ms,,0.5\n")  # the directed edge 0 -> 3 only
    table = _table(nx.star_graph(3), bandwidth="10Mbit", latency="1ms", jitter="2ms", file=str(f))
    assert table.spec(1, 0) == LinkSpec(rate=2e6 / 8, latency=0.005, jitter=0.002)
    assert table.spec(0, 2).rate == 1e6 / 8 and table.spec(2, 0).rate == 10e6 / 8
    assert table.spec(0, 3) == LinkSpec(rate=10e6 / 8, latency=0.05, jitter=0.002, loss=0.5)
    assert table.spec(3, 0) == LinkSpec(rate=10e6 / 8, latency=0.001, jitter=0.002)
    assert table.digest  # machines compare it: they must read the same file


@pytest.mark.parametrize("rows, message", [
    ("1,2,1Mbit,,,\n", r"line 2: 1 -> 2 is not an edge of the graph"),
    ("0,1,1Mbps,,,\n0,1,,5ms,,\n", r"line 3: link 0 -> 1 is set twice"),
    ("0,1,1Mbits,,,\n", r"line 2: bandwidth '1Mbits': unknown unit 'Mbits'"),
    ("0,1,,,,1.2\n", r"line 2: loss '1.2': a loss probability must lie in \[0, 1\]"),
    ("0,9,,,,\n", r"line 2: node 9 is not in the graph"),
    (",1,,5ms,,\n", r"line 2: a downlink row \(no src\) sets only bandwidth"),
    (",,1Mbit,,,\n", r"line 2: src or dst must name a node"),
])
def test_a_bad_links_file_row_is_refused_naming_its_line(tmp_path, rows, message) -> None:
    f = tmp_path / "links.csv"
    f.write_text("src,dst,bandwidth,latency,jitter,loss\n" + rows)
    with pytest.raises(DsimError, match=message):
        _table(nx.star_graph(3), file=str(f))


def test_a_links_file_needs_its_header_and_must_exist(tmp_path) -> None:
    f = tmp_path / "links.csv"
    f.write_text("from,to,rate\n0,1,1Mbit\n")
    with pytest.raises(DsimError, match="the header must name src, dst"):
        _table(nx.star_graph(3), file=str(f))
    with pytest.raises(DsimError, match="does not exist"):
        _table(nx.star_graph(3), file=str(tmp_path / "missing.csv"))


@pytest.mark.parametrize("kind", ["lognormal", "uniform"])
def test_heterogeneity_scales_uplinks_by_a_seeded_draw_per_node(kind) -> None:
    graph = nx.path_graph(2000)
    draws = [_table(graph, seed=seed, bandwidth="1MB", heterogeneity=kind, sigma=0.5).node
             for seed in (0, 0, 1)]
    ups = [[node(r).up for r in range(2000)] for node in draws]
    assert ups[0] == ups[1] and ups[0] != ups[2]  # a function of the seed and the rank
    assert len(set(ups[0])) == 2000 and sum(ups[0]) / 2000 == pytest.approx(1e6, rel=0.05)  # mean 1
    assert all(draws[0](r).down == 1e6 for r in range(10))  # downlinks are not drawn
    assert _table(graph, heterogeneity=kind, latency="1ms").node(5).up == math.inf  # unlimited stays so


def test_links_left_alone_build_no_table_and_an_ideal_table_keeps_the_fast_path() -> None:
    ring = nx.cycle_graph(4)
    assert _table(ring) is None
    ideal = _table(ring, bandwidth="inf")
    assert ideal is not None and all(ideal.spec(0, n).ideal for n in (1, 3))

    def endpoint(table) -> Endpoint:
        return Endpoint(None, 0, (1, 3), {2: 1}, 1 << 20, lambda *a, **k: None, table)

    assert endpoint(None)._links is None and endpoint(ideal)._links is None
    assert endpoint(_table(ring, bandwidth="10Gbit"))._links is not None


# --- one link's timing ---------------------------------------------------------------------------


def test_messages_serialise_one_after_another_then_propagate() -> None:
    link = Link(LinkSpec(rate=1000.0, latency=0.5), "k")
    assert link.admit(1000, now=0.0) == (1.5, 1.0, 0.5)  # 1 s on the wire, then 0.5 s away
    assert link.admit(1000, now=0.0)[0] == 2.5  # behind the first: starts at 1 s
    assert link.admit(500, now=10.0)[0] == 11.0  # an idle link starts at once


def test_jitter_never_reorders_a_link_and_the_same_key_draws_the_same() -> None:
    spec = LinkSpec(latency=0.01, jitter=1.0, loss=0.3)
    a, b = Link(spec, "same"), Link(spec, "same")
    runs = [[link.admit(10, now=i * 0.001)[0] for i in range(200)] for link in (a, b)]
    assert runs[0] == runs[1]
    arrivals = [t for t in runs[0] if t is not None]
    assert arrivals == sorted(arrivals) and 100 < len(arrivals) < 180
    assert all(t >= i * 0.001 + 0.01 for i, t in enumerate(runs[0]) if t is not None)
    other = Link(spec, "other")
    assert [other.admit(10, now=i * 0.001)[0] for i in range(200)] != runs[0]


def test_loss_one_loses_everything_but_greetings() -> None:
    link = Link(LinkSpec(loss=1.0), "k")
    assert all(link.admit(10, 0.0)[0] is None for _ in range(50))
    assert link.admit(10, 0.0, lossy=False)[0] == 0.0


# --- the runtime, in one process -----------------------------------------------------------------


def _delays(run) -> tuple[list[int], list[float]]:
    res = run.results[run.config.timed.dst]
    return res["order"], res["delays"]


def test_bandwidth_delays_each_message_by_its_serialisation_behind_the_previous_in_memory() -> None:
    run = run_program(TIMED, nodes=2, topology="full",
                      sets=["links.bandwidth=8Mbit", "timed.count=2", f"timed.bytes={MB}"])
    order, delays = _delays(run)
    since_first = run.results[1]["since_first"]
    assert order == [0, 1] and delays[0] >= 1.0 and since_first[1] >= 2.0 and delays[1] >= 1.0
    sender, receiver = run.traffic[0], run.traffic[1]
    on_the_wire = sender["by_kind"]["timed"]["bytes_sent"] / 1e6  # 8 Mbit/s = 1e6 bytes/s
    assert sender["send_s"] == pytest.approx(on_the_wire + sender["by_kind"]["hello"]["bytes_sent"] / 1e6, abs=1e-5)
    assert receiver["recv_s"] == pytest.approx(sender["send_s"], abs=1e-5)  # the receiver's own figure
    assert sender["latency_s"] == 0.0 and sender["msgs_lost"] == 0


def test_latency_adds_to_every_message_in_order_and_a_relay_adds_its_own_hop(tmp_path) -> None:
    sets = ["links.latency=50ms", "links.jitter=20ms", "timed.count=10"]
    order, delays = _delays(run_program(TIMED, nodes=2, topology="full", sets=sets))
    assert order == list(range(10)) and min(delays) >= 0.05
    f = tmp_path / "links.csv"
    f.write_text("src,dst,latency\n0,2,200ms\n")  # the hub's link to node 2 only
    relayed = run_program(TIMED, nodes=2, topology="star",
                          sets=[*sets, "timed.src=1", "timed.dst=2", f"links.file={f}"])
    order, delays = _delays(relayed)
    assert order == list(range(10)) and min(delays) >= 0.05 + 0.2
    assert relayed.traffic[0]["msgs_relayed"] == 10 and relayed.traffic[0]["latency_s"] >= 10 * 0.2


def test_loss_one_delivers_nothing_and_every_loss_is_counted_and_logged() -> None:
    run = run_program(TIMED, nodes=2, topology="full", sets=["links.loss=1", "timed.count=10", "timed.wait=0.3"])
    assert run.results[1] == {"order": [], "delays": [], "since_first": []}
    sender = run.traffic[0]
    sent = sender["by_kind"]["timed"]
    assert sender["msgs_lost"] == sent["msgs_sent"] == 10 and sender["bytes_lost"] == sent["bytes_sent"]
    assert run.traffic[1]["by_kind"].get("timed") is None  # nothing half-delivered
    lost = run.events(0, "lost")
    assert len(lost) == 10 and {(e["reason"], e["kind"], e["dst"]) for e in lost} == {("link loss", "timed", 1)}


def test_the_harness_waits_for_messages_in_link_queues_and_fails_when_they_outlast_the_deadline() -> None:
    # The receiver gives up at once; the 1 MB message lands 1 s later, after every node has finished.
    sets = ["links.bandwidth=8Mbit", f"timed.bytes={MB}", "timed.wait=0.01"]
    run = run_program(TIMED, nodes=2, topology="full", sets=sets)
    assert run.results[1]["order"] == [] and run.traffic[1]["by_kind"]["timed"]["msgs_recv"] == 1
    with pytest.raises(ProgramFailed, match="still in flight at the deadline"):
        run_program(TIMED, nodes=2, topology="full", sets=sets, timeout=0.5)


def test_metric_events_carry_the_seconds_since_the_run_started() -> None:
    run = run_program("gossip", nodes=3, sets=["rounds=3", "gossip.dim=4", "links.latency=20ms"])
    times = [e["t"] for e in run.events(0)]
    assert len(times) == 3 and times == sorted(times) and times[-1] - times[0] >= 2 * 0.02


# --- the runtime over sockets and packed -------------------------------------------------------------


@pytest.mark.parametrize("per_process", [1, 2])
def test_a_megabyte_over_8_mbit_takes_a_second_over_sockets_and_packed(tmp_path, per_process) -> None:
    run = timed(tmp_path, "full", 2, per_process, ["links.bandwidth=8Mbit", "timed.count=2", f"timed.bytes={MB}"])
    node = run["results"]["per_node"]["1"]
    assert node["order"] == [0, 1] and node["delays"][0] >= 1.0 and node["since_first"][1] >= 2.0
    assert float(run["rows"][0]["send_s"]) >= 2.0 and float(run["rows"][1]["recv_s"]) >= 2.0


def test_sockets_and_packed_nodes_lose_the_same_messages_with_the_same_seed(tmp_path) -> None:
    """Node 1 sends to node 2 through the hub over lossy, jittery links: the same seed loses the same
    messages on both hops in the harness, over sockets and packed, and the latency floor holds."""
    sets = ["seed=3", "links.loss=0.3", "links.latency=20ms", "links.jitter=10ms", "timed.src=1", "timed.dst=2",
            "timed.count=30", "timed.wait=1"]
    harness = run_program(TIMED, nodes=2, topology="star", sets=sets)
    expected = _delays(harness)[0]
    lost = {r: harness.traffic[r]["msgs_lost"] for r in (0, 1)}
    assert 0 < len(expected) < 30 and lost[0] > 0 and lost[1] > 0  # both hops lose some
    assert lost[1] + lost[0] + len(expected) == 30
    for per_process in (1, 3):
        run = timed(tmp_path / str(per_process), "star", 2, per_process, sets)
        node = run["results"]["per_node"]["2"]
        assert node["order"] == expected, per_process
        assert min(node["delays"]) >= 2 * 0.02
        assert {r: int(run["rows"][r]["msgs_lost"]) for r in (0, 1)} == lost, per_process
        events = [e for e in node_events(run["run_dir"], 0) if e["event"] == "lost"]
        assert len(events) == lost[0] and all(e["reason"] == "link loss" and e["dst"] == 2 for e in events)


def test_a_message_waiting_in_its_link_queue_holds_its_arrays_as_they_were_at_send(tmp_path) -> None:
    """The sender overwrites its arrays right after `send` returns, long before the 50 ms arrival."""
    sets = ["links.latency=50ms"]
    assert run_program("testprogs.snapshot", nodes=2, topology="full", sets=sets).results[1]["minimums"] == [7.0] * 3
    res, run_dir = launch(tmp_path, "--nodes", "2", "--topology", "full", "--algorithm", "testprogs.snapshot",
                          "--quiet", sets=sets)
    assert res.returncode == 0, res.stderr
    assert summary(run_dir)["results"]["per_node"]["1"]["minimums"] == [7.0] * 3


def test_a_message_still_queued_when_the_drain_gives_up_is_counted_lost_with_its_reason(tmp_path) -> None:
    """1 MB over 1 Mbit/s takes 8 s; the receiver stops waiting at once and the drain gives up after the
    1 s timeout: the message is reported lost (not silently gone) and the run ends with a warning."""
    res, run_dir = launch(tmp_path, "--nodes", "2", "--topology", "full", "--algorithm", "testprogs.timed",
                          "--quiet", sets=["timeout=1", "links.bandwidth=1Mbit", f"timed.bytes={MB}",
                                           "timed.wait=0.01"])
    assert res.returncode == 0, res.stderr
    assert any("still in flight" in w for w in summary(run_dir)["warnings"])
    rows = {int(r["rank"]): r for r in read_csv(run_dir / "bandwidth.csv")}
    assert rows[0]["msgs_lost"] == "1" and int(rows[0]["bytes_lost"]) > MB
    lost = [e for e in node_events(run_dir, 0) if e["event"] == "lost"]
    assert len(lost) == 1 and "run stopped" in lost[0]["reason"]


@pytest.mark.parametrize("setting, message", [
    ("links.bandwidth=10Mbits", "unknown unit 'Mbits'"),
    ("links.client.up=-5Mbit", "negative"),
    ("links.loss=1.5", "'links.loss' expects float <= 1.0"),
    ("links.file=links.csv", "links.file links.csv line 2: 1 -> 2 is not an edge of the graph"),
])
def test_a_bad_link_spec_is_refused_before_any_process_starts(tmp_path, setting, message) -> None:
    (tmp_path / "links.csv").write_text("src,dst,bandwidth\n1,2,1Mbit\n")  # leaves 1 and 2 of a star
    res, _ = launch(tmp_path, "--nodes", "3", "--topology", "star", "--algorithm", "gather", sets=[setting],
                    cwd=tmp_path, out=False)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dsim: error: ") and message in lines[0], lines
    assert not (tmp_path / "runs").exists()


def test_with_links_off_a_run_s_counters_are_unchanged_and_the_new_columns_are_zero(tmp_path) -> None:
    rounds, size = 3, 256
    res, run_dir = launch(tmp_path, "--nodes", "4", "--topology", "ring", "--algorithm", "exchange",
                          sets=[f"rounds={rounds}", f"exchange.bytes={size}"])
    assert res.returncode == 0, res.stderr
    header = next(line for line in res.stdout.splitlines() if line.split()[:2] == ["rank", "role"])
    assert "lost" not in header  # the closing table shows link columns only when links were used
    with open(run_dir / "bandwidth.csv") as fh:
        assert fh.readline().strip().split(",") == OLD_COLUMNS + LINK_COLUMNS == BANDWIDTH_COLUMNS
    run_id = summary(run_dir)["run_id"]
    payload = np.zeros(size // 4, dtype=np.float32)
    for row in read_csv(run_dir / "bandwidth.csv"):
        rank = int(row["rank"])
        expected = sum(wire.frames_size(wire.encode(run_id, rank, n, "hello", None))
                       + rounds * wire.frames_size(wire.encode(run_id, rank, n, EXCHANGE, payload))
                       for n in ((rank - 1) % 4, (rank + 1) % 4))
        assert (int(row["bytes_sent"]), int(row["bytes_recv"]), row["msgs_sent"]) == (expected, expected, "8")
        assert [float(row[c]) for c in LINK_COLUMNS] == [0.0] * len(LINK_COLUMNS)
        traffic = [e for e in node_events(run_dir, rank) if e["event"] == "traffic"][0]
        assert [traffic[c] for c in LINK_COLUMNS] == [0] * len(LINK_COLUMNS)
