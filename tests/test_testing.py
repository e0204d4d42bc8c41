"""dsim.testing, the in-process harness: it counts what a real run counts, names failing nodes, never hangs."""

from __future__ import annotations

import asyncio
import csv
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import psutil
import pytest
from msgspec import Meta

from conftest import read_csv, run_dsim
from dsim.errors import DsimError
from dsim.node import Node
from dsim.options import Options
from dsim.program import Program
from dsim.testing import ProgramFailed, run_program, run_program_async

COUNTERS = ("bytes_sent", "bytes_recv", "msgs_sent", "msgs_recv", "bytes_relayed")


class EchoOptions(Options):
    """Options of the test programs below."""

    fail_rank: Annotated[int, Meta(ge=-1, description="rank that raises (-1: none)")] = -1
    silent_rank: Annotated[int, Meta(ge=-1, description="rank that never sends (-1: none)")] = -1
    block_s: Annotated[float, Meta(ge=0, description="seconds rank 0 spends in an offloaded wait first")] = 0.0


RELEASE = threading.Event()  # lets a test end the offloaded wait of the 'blocked' case


class Echo(Node):
    """Each node sends its rank to every neighbour and sums what it receives."""

    async def run(self) -> dict[str, Any]:
        opts = self.options
        if self.rank == opts.fail_rank:
            raise ValueError(f"boom on {self.rank}")
        if self.rank == 0 and opts.block_s:
            await self.offload(RELEASE.wait, opts.block_s)
        if self.rank != opts.silent_rank:
            await self.broadcast("x", {"v": self.rank})
        got = await self.gather("x")
        self.log(total=sum(p["v"] for p in got.values()))
        return {"total": sum(p["v"] for p in got.values()), "degree": len(self.neighbours)}


def echo_summary(results: dict[int, dict[str, Any]], graph: Any) -> dict[str, Any]:
    return {"grand_total": sum(r["total"] for r in results.values())}


ECHO = Program(name="echo", roles={"peer": Echo}, options=EchoOptions, summarize=echo_summary)


def test_traffic_equals_a_real_multi_process_run_of_gather_on_a_6_ring(tmp_path: Path) -> None:
    """One process per node over TCP, and the harness in memory: the same counters, kind by kind."""
    sets = ["rounds=2", "gather.size=1000"]
    res = run_dsim("launch", "--nodes", "5", "--topology", "ring", "--algorithm", "gather", "--quiet",
                   "--out", str(tmp_path / "real"), *[a for s in sets for a in ("--set", s)])
    assert res.returncode == 0, res.stderr
    run = run_program("gather", nodes=5, topology="ring", sets=sets, run_dir=tmp_path / "harness")
    assert run.graph.number_of_nodes() == 6 and run.summary["replies"] == 10
    real = {int(r["rank"]): r for r in read_csv(tmp_path / "real" / "bandwidth.csv")}
    assert sorted(real) == sorted(run.traffic) == list(range(6))
    for rank, row in real.items():
        assert {c: int(row[c]) for c in COUNTERS} == {c: run.traffic[rank][c] for c in COUNTERS}, rank
    assert int(real[1]["bytes_relayed"]) > 0  # node 1 relays for node 3: the comparison covers relays
    with open(tmp_path / "real" / "bandwidth_by_kind.csv") as fh:
        for row in csv.DictReader(fh):
            kind = run.traffic[int(row["rank"])]["by_kind"][row["kind"]]
            assert {k: int(row[k]) for k in kind} == kind, row
    # The harness writes the same files, from the same counters.
    harness_rows = read_csv(tmp_path / "harness" / "bandwidth.csv")
    assert [[r[c] for c in COUNTERS] for r in harness_rows] == [[real[i][c] for c in COUNTERS] for i in range(6)]


def test_results_summary_logs_and_run_dir(tmp_path: Path) -> None:
    run = run_program(ECHO, nodes=4, topology="ring", run_dir=tmp_path)
    assert run.results == {r: {"total": (r - 1) % 4 + (r + 1) % 4, "degree": 2} for r in range(4)}
    assert run.summary == {"grand_total": 2 * (0 + 1 + 2 + 3)}
    assert run.config.algorithm == "echo" and run.config.nodes == 4
    for rank in range(4):
        assert [e["event"] for e in run.logs[rank]] == ["start", "metric", "done", "traffic"]
        assert run.events(rank) == [e for e in run.logs[rank] if e["event"] == "metric"]
        assert run.logs[rank][-1]["msgs_sent"] == 2 + 2  # a hello and one 'x' to each neighbour
    assert (tmp_path / "config.toml").exists() and (tmp_path / "bandwidth.csv").exists()
    with pytest.raises(DsimError, match="already holds"):  # logs are appended: a used run_dir is refused
        run_program(ECHO, run_dir=tmp_path)


def test_a_node_that_raises_fails_the_run_naming_it() -> None:
    t0 = time.monotonic()
    with pytest.raises(ProgramFailed, match=r"node 2 \(peer\) failed: ValueError: boom on 2 \(at test_testing.py:\d+\)") as info:
        run_program(ECHO, nodes=4, sets=["echo.fail_rank=2"], timeout=30)
    assert info.value.ranks == [2]
    assert time.monotonic() - t0 < 5  # the others, waiting for node 2, are cancelled at once


def test_a_silent_node_times_out_within_the_timeout_naming_who_waits_for_what() -> None:
    t0 = time.monotonic()
    with pytest.raises(ProgramFailed, match="did not finish within 1 s") as info:
        run_program(ECHO, nodes=3, topology="ring", sets=["echo.silent_rank=1"], timeout=1.0)
    elapsed = time.monotonic() - t0
    assert 1.0 <= elapsed < 3.0, elapsed
    assert info.value.ranks == [0, 2]  # node 1 heard both and finished
    assert "node 0 (peer) waits for 'x' from node 1" in str(info.value)
    assert "node 2 (peer) waits for 'x' from node 1" in str(info.value)


def test_the_configs_node_timeout_applies_as_in_a_real_run() -> None:
    with pytest.raises(ProgramFailed, match=r"node 0 \(peer\) failed: NodeTimeout: node 0 \(peer\) waited 0.3 s "
                                            r"for 'x' from node 1"):
        run_program(ECHO, nodes=3, sets=["echo.silent_rank=1", "timeout=0.3"], timeout=30)


def test_an_offloaded_computation_that_outlives_the_timeout_does_not_hang_the_harness() -> None:
    RELEASE.clear()
    t0 = time.monotonic()
    try:
        with pytest.raises(ProgramFailed, match=r"node 0 \(peer\) is still running"):
            run_program(ECHO, nodes=3, sets=["echo.block_s=30"], timeout=0.5)
        assert time.monotonic() - t0 < 3.0  # the thread still waits; run_program did not
    finally:
        RELEASE.set()


def test_bad_config_values_are_refused_like_the_launcher_refuses_them() -> None:
    with pytest.raises(DsimError, match="gossip.dim"):
        run_program("gossip", sets=["gossip.dim=0"])
    with pytest.raises(DsimError, match="unknown config key 'echo.nope'"):
        run_program(ECHO, sets=["echo.nope=1"])
    with pytest.raises(DsimError, match="unknown algorithm"):
        run_program("no-such-program")


def test_a_config_file_and_flags_resolve_with_the_launchers_precedence(tmp_path: Path) -> None:
    (tmp_path / "run.toml").write_text('nodes = 6\ntopology = "full"\nrounds = 7\n[gossip]\ndim = 4\n')
    run = run_program("gossip", nodes=None, topology=None, config=tmp_path / "run.toml", flags={"seed": 3},
                      sets=["rounds=2"])
    cfg = run.config
    assert (cfg.nodes, cfg.topology, cfg.seed, cfg.rounds, cfg.gossip.dim) == (6, "full", 3, 2, 4)
    assert run.graph.number_of_edges() == 15 and len(run.events(0)) == 2


def test_no_thread_and_no_socket_is_left_or_opened() -> None:
    """OS threads (ZeroMQ's I/O threads would show here) and sockets, before and after a run."""
    me = psutil.Process()
    threads, sockets = me.num_threads(), len(me.net_connections(kind="all"))
    run = run_program("gossip", nodes=5, sets=["rounds=3", "gossip.dim=4"])
    assert run.summary["max_error"] < run.summary["mean_start_error"]
    assert me.num_threads() == threads and len(me.net_connections(kind="all")) == sockets


def test_the_async_variant_runs_in_the_callers_loop() -> None:
    async def main() -> None:
        run = await run_program_async(ECHO, nodes=3, topology="full")
        assert run.summary == {"grand_total": 2 * (0 + 1 + 2)}
        with pytest.raises(RuntimeError, match="run_program_async"):
            run_program(ECHO)

    asyncio.run(main())


def test_gather_round_leaves_out_the_missing_and_drops_the_late() -> None:
    run = run_program("testprogs.lossy_rounds", nodes=3, topology="full", timeout=30)
    assert run.results[0]["heard"] == [[1, 2], [2], [1, 2], [1, 2]]
    assert run.results[1]["heard"] == [[0, 2]] * 4
    missing = [(e["src"], e["round"]) for e in run.events(0, "missing")]
    stale = [(e["src"], e["round"], e["expected"]) for e in run.events(0, "stale")]
    # node 1 is already in round 2 when node 0 still waits for its round 1: the late copy is seen
    # then, and its round-2 message (FIFO: round 1 is not coming) is kept for round 2
    assert missing == [(1, 1)] and stale == [(1, 0, 1)]
