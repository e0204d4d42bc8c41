"""Churn schedules and straggler factors: seeded, the configured share, traces checked line by line."""

from __future__ import annotations

import csv
import os
import subprocess

import pytest

from conftest import REPO, dsim_script, node_events, summary
from dsim.churn import (
    ChurnOptions,
    Schedule,
    StragglerOptions,
    draw_schedule,
    read_trace,
    schedules,
    slowdowns,
)
from dsim.errors import DsimError
from dsim.testing import run_program


def test_a_drawn_schedule_is_offline_for_the_configured_share_and_repeats_with_its_seed() -> None:
    opts = ChurnOptions(offline_fraction=0.2, mean_offline=5.0, horizon=20000.0)
    shares = []
    for rank in range(5):
        s = draw_schedule(opts, seed=1, rank=rank)
        assert s == draw_schedule(opts, seed=1, rank=rank) and s != draw_schedule(opts, seed=2, rank=rank)
        assert all(a < b <= c for (a, b), (c, _) in zip(s.periods, s.periods[1:], strict=False))
        shares.append(sum(b - a for a, b in s.periods) / opts.horizon)
        mean_down = sum(b - a for a, b in s.periods) / len(s.periods)
        assert 4.0 < mean_down < 6.0
    assert all(0.17 < x < 0.23 for x in shares), shares


def test_offline_at_follows_the_periods() -> None:
    s = Schedule(((1.0, 2.0), (5.0, 7.5)))
    assert [s.offline_at(t) for t in (0.5, 1.0, 1.9, 2.0, 4.99, 5.0, 7.49, 7.5, 100)] == \
        [False, True, True, False, False, True, True, False, False]
    assert not Schedule().offline_at(3.0)


def test_only_the_churning_roles_churn() -> None:
    opts = ChurnOptions(offline_fraction=0.5, mean_offline=1.0, horizon=100.0)
    got = schedules(opts, 0, {0: "server", 1: "client", 2: "client"})
    assert got[0] == Schedule() and got[1].periods and got[2].periods and got[1] != got[2]


@pytest.mark.parametrize("text, message", [
    ("rank,start,end\n9,1,2\n", "line 2: rank 9 is not a node"),
    ("rank,start,end\n1,3,2\n", "need 0 <= start < end"),
    ("rank,start,end\n1,a,2\n", "expected numbers"),
    ("rank,start,end\n1,1,5\n1,4,6\n", "overlap"),
])
def test_bad_trace_rows_are_one_line_errors(tmp_path, text: str, message: str) -> None:
    path = tmp_path / "trace.csv"
    path.write_text(text)
    with pytest.raises(DsimError, match=message):
        read_trace(str(path), range(3))


def test_a_trace_gives_each_rank_its_periods(tmp_path) -> None:
    path = tmp_path / "trace.csv"
    path.write_text("rank,start,end\n2,5,6\n1,0.5,1.5\n2,1,2\n")
    got = read_trace(str(path), range(3))
    assert got == {1: Schedule(((0.5, 1.5),)), 2: Schedule(((1.0, 2.0), (5.0, 6.0)))}


def test_straggler_factors_draw_the_share_and_take_overrides() -> None:
    got = slowdowns(StragglerOptions(fraction=0.3, slowdown=3.0, factors={"0": 2.0}), 7, range(10))
    assert got == slowdowns(StragglerOptions(fraction=0.3, slowdown=3.0, factors={"0": 2.0}), 7, range(10))
    assert got[0] == 2.0 and sorted(got.values()).count(3.0) in (2, 3)
    with pytest.raises(DsimError, match="'12', which is not a rank"):
        slowdowns(StragglerOptions(factors={"12": 2.0}), 0, range(10))


# --- in a run ---------------------------------------------------------------------------------------


def test_an_offline_node_neither_sends_nor_receives_and_the_others_go_on(tmp_path) -> None:
    trace = tmp_path / "trace.csv"
    trace.write_text("rank,start,end\n1,0,1000\n")
    run = run_program("gossip", nodes=4, topology="ring", timeout=60,
                      sets=["rounds=3", "gossip.dim=8", "gossip.round_timeout=0.3", f"churn.trace='{trace}'"])
    heard = {r: [len([e for e in run.events(r, "missing") if e["round"] == k]) for k in range(3)] for r in range(4)}
    # node 1 hears nobody; its neighbours 0 and 2 miss exactly node 1 every round (node 3, waiting on
    # them while they wait out node 1, may time out too: that depends on timing, so it is not checked)
    assert heard[1] == [2, 2, 2] and heard[0] == [1, 1, 1] and heard[2] == [1, 1, 1]
    assert run.traffic[1]["msgs_recv"] == 2 and run.traffic[1]["msgs_lost"] == 12  # 6 out, 6 in; 2 hellos
    assert [e["periods"][0][0] for e in run.logs[1] if e["event"] == "offline"] == [0.0]


def test_a_straggler_computes_slower(tmp_path) -> None:
    run = run_program("testprogs.slow_compute", nodes=3, topology="ring", sets=['stragglers.factors={"1" = 3.0}'])
    assert run.results[1]["seconds"] >= 0.6 and run.results[0]["seconds"] >= 0.2


def _dpsgd_with_churn(out) -> subprocess.CompletedProcess:
    return subprocess.run(
        [dsim_script(), "launch", "--nodes", "4", "--topology", "ring", "--algorithm", "dpsgd", "--out", str(out),
         "--seed", "3", "--set", "rounds=8", "--set", "dpsgd.local_steps=1", "--set", "dpsgd.batch=8",
         "--set", "dpsgd.width=8", "--set", "dpsgd.test_subset=50", "--set", "dpsgd.round_timeout=0.5",
         "--set", "churn.offline_fraction=0.5", "--set", "churn.mean_offline=0.6", "--quiet"],
        capture_output=True, text=True, timeout=240, env={**os.environ, "PYTHONPATH": str(REPO / "tests")})


def test_dpsgd_on_a_ring_with_churn_finishes_and_its_schedule_repeats(tmp_path) -> None:
    periods = {}
    for name in ("a", "b"):
        proc = _dpsgd_with_churn(tmp_path / name)
        assert proc.returncode == 0, proc.stderr
        assert summary(tmp_path / name)["status"] == "ok"
        periods[name] = {r: next(e["periods"] for e in node_events(tmp_path / name, r) if e["event"] == "offline")
                         for r in range(4)}
        with open(tmp_path / name / "bandwidth.csv") as fh:  # every message sent arrived or was lost
            rows = list(csv.DictReader(fh))
        total = {k: sum(int(r[k]) for r in rows) for k in ("msgs_sent", "msgs_recv", "msgs_lost")}
        assert total["msgs_sent"] == total["msgs_recv"] + total["msgs_lost"], total
    for r in range(4):
        drawn = draw_schedule(ChurnOptions(offline_fraction=0.5, mean_offline=0.6), seed=3, rank=r).periods
        for name in ("a", "b"):  # each run went through the same schedule, up to where it ended
            logged = periods[name][r]
            assert [p[0] for p in logged] == [round(p[0], 3) for p in drawn[:len(logged)]]
            assert all(b <= round(p[1], 3) for (_, b), p in zip(logged, drawn, strict=False))
