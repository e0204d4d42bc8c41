"""Churn schedules and straggler factors: seeded, the configured share, traces checked line by line."""

from __future__ import annotations

import pytest

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
