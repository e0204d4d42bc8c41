"""`dsim launch --sweep`: grid expansion, names and validation in one process; real sweeps of real runs
(interrupted with SIGINT and resumed, a failed point among good ones) through the console script."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
from pathlib import Path

import pytest
from test_launch import wait_for

from conftest import REPO, dsim_script, read_csv, run_dsim, summary
from dsim.errors import DsimError
from dsim.sweep import (
    Axis,
    check_parent,
    expand,
    flatten_results,
    parse_axes,
    plan_sweep,
    split_values,
    write_definition,
)

# FedAvg on the bundled digits, 2 clients, one round of a 4-channel ConvNet: a few seconds a run.
TINY = ["--algorithm", "fedavg", "--nodes", "2", "--dataset", "digits", "--set", "rounds=1",
        "--set", "fedavg.local_epochs=1"]
GRID = ["--sweep", "fedavg.width=4,8", "--sweep", "seed=0,1"]
NAMES = ["fedavg.width=4,seed=0", "fedavg.width=4,seed=1", "fedavg.width=8,seed=0", "fedavg.width=8,seed=1"]


def test_values_split_on_commas_outside_quotes_and_brackets() -> None:
    assert split_values("1,10,50") == ["1", "10", "50"]
    assert split_values("'a,b', \"c\" ,[1,2],{x=1,y=2}") == ["'a,b'", '"c"', "[1,2]", "{x=1,y=2}"]


def test_the_grid_is_the_product_first_axis_slowest_with_readable_names() -> None:
    points = expand(parse_axes(["dm.ipc=1,10", "seed=0,1,2"]))
    assert [p.name for p in points] == [f"dm.ipc={i},seed={s}" for i in (1, 10) for s in (0, 1, 2)]
    assert points[4].sets == ["dm.ipc=10", "seed=1"]


def test_names_are_filesystem_safe_and_distinct() -> None:
    points = expand([Axis("topology", ("graphs/a b.edges", "ring")), Axis("links.client.up", ("'1Mbit'",))])
    assert points[0].name == "topology=graphs_a_b.edges,links.client.up=1Mbit"
    with pytest.raises(DsimError, match="same directory name"):
        expand([Axis("topology", ("a/b", "a_b"))])
    long = expand([Axis("net.host", ("x" * 300, "x" * 299 + "y"))])
    assert all(len(p.name) <= 120 for p in long) and long[0].name != long[1].name


@pytest.mark.parametrize("text, message", [
    ("seed", "expects KEY=V1,V2"),
    ("=1,2", "expects KEY=V1,V2"),
    ("seed=0,,1", "empty value"),
    ("seed=0,0", "repeats a value"),
    ("out=a,b", "cannot vary 'out'"),
])
def test_malformed_sweeps_are_refused(text, message) -> None:
    with pytest.raises(DsimError, match=message):
        parse_axes([text])


def test_the_same_key_twice_is_refused() -> None:
    with pytest.raises(DsimError, match="twice"):
        parse_axes(["seed=0,1", "seed=2"])


def test_every_point_is_checked_and_a_bad_one_is_named() -> None:
    with pytest.raises(DsimError, match=r"sweep point topology=nope: unknown topology"):
        plan_sweep(parse_axes(["topology=ring,nope"]), None, {"algorithm": "gossip", "nodes": 4}, [])
    with pytest.raises(DsimError, match="resolve to the same experiment"):
        plan_sweep(parse_axes(["gossip.dim=8,+8"]), None, {"algorithm": "gossip"}, [])


def test_points_run_under_the_parent_named_by_their_values() -> None:
    parent, points = plan_sweep(parse_axes(["rounds=1,2"]), None, {"algorithm": "gossip", "out": "p"}, ["seed=3"])
    assert parent == Path("p")
    assert [(p.cfg.out, p.cfg.rounds, p.cfg.seed) for p in points] == [("p/rounds=1", 1, 3), ("p/rounds=2", 2, 3)]
    default, _ = plan_sweep(parse_axes(["seed=1,2"]), None, {"algorithm": "gossip"}, [])
    assert default.parent == Path("runs") and default.name.endswith("-sweep-gossip")


def test_results_flatten_to_scalar_columns_leaving_per_node_tables_out() -> None:
    flat = flatten_results({"accuracy_mean": 0.9, "model": {"name": "convnet", "width": 8}, "history": [1, 2],
                            "bytes_per_client": {"1": 10, "2": 20}, "per_node": {"0": {}}, "gain": None})
    assert flat == {"accuracy_mean": 0.9, "model.name": "convnet", "model.width": 8, "gain": None}


@pytest.mark.parametrize("sweep, message", [
    ("fedavg.nope=1,2", "sweep point fedavg.nope=1: unknown config key 'fedavg.nope'"),
    ("seed=0,x", "sweep point seed=x: config key 'seed' expects int, got 'x'"),
])
def test_a_bad_key_or_value_is_one_line_exit_2_and_nothing_runs(tmp_path, sweep, message) -> None:
    res = run_dsim("launch", *TINY, "--sweep", sweep, "--out", str(tmp_path / "sweep"))
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith("dsim: error:") and res.stderr.count("\n") == 1, res.stderr
    assert message in res.stderr
    assert not (tmp_path / "sweep").exists()


def test_a_sweep_over_several_machines_is_refused(tmp_path) -> None:
    (tmp_path / "hosts").write_text("127.0.0.1 slots=2\n127.0.0.2 slots=1\n")
    res = run_dsim("launch", *TINY, "--sweep", "seed=0,1", "--hosts", str(tmp_path / "hosts"))
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "--sweep runs every point on this machine" \
        in res.stderr, res.stderr


def test_a_resumed_sweep_may_grow_but_not_change(tmp_path) -> None:
    parent = tmp_path / "sweep"
    base = {"algorithm": "gossip", "nodes": 4, "out": str(parent)}
    axes = parse_axes(["rounds=1,2"])
    _, points = plan_sweep(axes, None, base, [])
    parent.mkdir()
    write_definition(parent, axes, points)
    grown = parse_axes(["rounds=1,2,3"])
    check_parent(parent, grown, plan_sweep(grown, None, base, [])[1])
    shrunk = parse_axes(["rounds=2"])
    with pytest.raises(DsimError, match="point rounds=1, which this grid lacks"):
        check_parent(parent, shrunk, plan_sweep(shrunk, None, base, [])[1])
    with pytest.raises(DsimError, match="holds this sweep with another config at rounds=1"):
        check_parent(parent, axes, plan_sweep(axes, None, base, ["seed=5"])[1])
    other = parse_axes(["seed=1,2"])
    with pytest.raises(DsimError, match="holds a sweep over rounds, not seed"):
        check_parent(parent, other, plan_sweep(other, None, base, [])[1])


def test_a_dry_run_lists_the_points_and_writes_nothing(tmp_path) -> None:
    res = run_dsim("launch", *TINY, *GRID, "--out", str(tmp_path / "sweep"), "--dry-run")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith("dsim: dry run of a sweep of 4 runs")
    assert [line.split(":")[0].strip() for line in lines[1:]] == NAMES and all("to run" in x for x in lines[1:])
    assert not (tmp_path / "sweep").exists()


def test_a_second_sweep_into_a_running_one_is_refused(tmp_path) -> None:
    parent = tmp_path / "sweep"
    parent.mkdir()
    fd = os.open(parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # what a running sweep holds
        res = run_dsim("launch", *TINY, *GRID, "--out", str(parent))
    finally:
        os.close(fd)
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "another sweep is running" in res.stderr and list(parent.iterdir()) == []


def sweep_cmd(parent: Path, *extra: str) -> list[str]:
    return [dsim_script(), "launch", *TINY, *GRID, "--out", str(parent), *extra]


def test_an_interrupted_sweep_resumes_running_only_what_did_not_finish(tmp_path) -> None:
    """The must-show: a 2 x 2 sweep stopped by Ctrl-C after its first run, resumed: the first run is kept
    (same run id), exactly the other three run; a second resume runs nothing."""
    parent = tmp_path / "sweep"
    first = parent / NAMES[0]
    proc = subprocess.Popen(sweep_cmd(parent), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (first / "summary.json").exists(), timeout=120, what="the first point's summary.json",
                 proc=proc)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)  # a run stopped before its coordinator: 10 s of reaping
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "sweep interrupted" in stderr and "Traceback" not in stderr
    kept = summary(first)
    assert kept["status"] == "ok"
    rows = read_csv(parent / "sweep.csv")
    assert [r["name"] for r in rows] == NAMES
    assert rows[0]["status"] == "ok" and rows[0]["run_id"] == kept["run_id"]
    assert all(r["status"] in ("pending", "interrupted") for r in rows[1:]), rows
    assert not any((parent / n / "summary.json").exists() and summary(parent / n)["status"] == "ok"
                   for n in NAMES[1:])

    res = subprocess.run(sweep_cmd(parent), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert f"{NAMES[0]}: done before (run {kept['run_id']}), skipped" in res.stderr
    assert res.stderr.count("results in ") == 2 * 3  # each of the three runs says where, starting and finishing
    assert summary(first) == kept
    rows = read_csv(parent / "sweep.csv")
    assert [(r["name"], r["status"], r["fedavg.width"], r["seed"]) for r in rows] == \
        [(n, "ok", w, s) for n, (w, s) in zip(NAMES, [("4", "0"), ("4", "1"), ("8", "0"), ("8", "1")], strict=True)]
    assert all(0 <= float(r["accuracy"]) <= 1 and float(r["wall_time_s"]) > 0 for r in rows)
    for r in rows:  # the clients' frames, a little more than their payload bytes
        clients = [b for b in read_csv(parent / r["name"] / "bandwidth.csv") if b["role"] == "client"]
        assert float(r["node_bytes_mean"]) == sum(int(b["bytes_sent"]) + int(b["bytes_recv"]) for b in clients) / 2
        assert float(r["node_bytes_mean"]) >= float(r["mean_bytes_per_client"])
    run_ids = {n: summary(parent / n)["run_id"] for n in NAMES}
    assert [r["run_id"] for r in rows] == list(run_ids.values()) and len(set(run_ids.values())) == 4
    assert sorted(p.name for p in parent.iterdir()) == sorted([*NAMES, "sweep.csv", "sweep.json"])

    again = subprocess.run(sweep_cmd(parent), capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("skipped") == 4 and "results in " not in again.stderr
    assert {n: summary(parent / n)["run_id"] for n in NAMES} == run_ids

    changed = subprocess.run(sweep_cmd(parent, "--set", "fedavg.lr=0.5"), capture_output=True, text=True,
                             timeout=60)
    assert changed.returncode == 2 and changed.stderr.count("\n") == 1, changed.stderr
    assert "another config" in changed.stderr and "fedavg.lr=0.01 (here 0.5)" in changed.stderr


def test_a_failed_point_does_not_stop_the_others_and_is_rerun_on_resume(tmp_path) -> None:
    parent = tmp_path / "sweep"
    cmd = [dsim_script(), "launch", "--nodes", "4", "--topology", "ring", "--set", "rounds=3",
           "--sweep", "algorithm=testprogs.failing,gossip", "--out", str(parent), "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests")}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 1, res.stderr
    assert "node 1 gives up on purpose" in res.stderr and "1 of 2 runs not ok" in res.stderr
    rows = {r["name"]: r for r in read_csv(parent / "sweep.csv")}
    assert rows["algorithm=testprogs.failing"]["status"] == "failed"
    assert "node 1 failed" in rows["algorithm=testprogs.failing"]["reason"]
    assert rows["algorithm=gossip"]["status"] == "ok" and float(rows["algorithm=gossip"]["max_error"]) >= 0
    ok_id = summary(parent / "algorithm=gossip")["run_id"]
    failed_id = summary(parent / "algorithm=testprogs.failing")["run_id"]

    res = subprocess.run([*cmd[:-1]], capture_output=True, text=True, timeout=120, env=env)  # not quiet
    assert res.returncode == 1, res.stderr
    assert "algorithm=testprogs.failing: rerun from scratch (was failed)" in res.stderr
    assert "algorithm=gossip: done before" in res.stderr
    assert summary(parent / "algorithm=gossip")["run_id"] == ok_id
    assert summary(parent / "algorithm=testprogs.failing")["run_id"] != failed_id
