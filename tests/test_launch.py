"""`dsim launch` end to end with real processes and sockets on this machine.

What a program computes is tested in one process with dsim.testing (the gossip and in-memory snapshot
cases here); the rest needs real processes: sockets, relays over TCP, failures, signals, machines.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

import msgpack
import psutil
import pytest
import zmq

from conftest import REPO, dsim_script, node_events, read_csv, run_dsim, summary
from dsim.testing import run_program

GOSSIP = ["rounds=80", "gossip.dim=64"]


def wait_for(condition, timeout: float = 60.0, what: str = "condition", proc: subprocess.Popen | None = None):
    """Poll a condition on files written by a running launch (not a fixed sleep); a launch that has
    already exited fails at once, with its stderr, instead of after the whole timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the launch exited ({proc.returncode}) before {what}: {proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def assert_consensus(results: dict, sent: list[int], received: list[int], errors: list[float]) -> None:
    assert results["mean_start_error"] > 1.0
    assert results["max_error"] < 1e-4 * results["mean_start_error"]
    assert len(sent) == 8 and sum(sent) == sum(received)
    assert len(errors) == 80 and errors[-1] < errors[0]


@pytest.mark.parametrize("topology, sets", [("ring", []), ("regular", ["graph.degree=4"])])
def test_gossip_reaches_consensus(topology, sets) -> None:
    run = run_program("gossip", nodes=8, topology=topology, sets=[*GOSSIP, *sets])
    traffic = run.traffic.values()
    assert_consensus(run.summary, [t["bytes_sent"] for t in traffic], [t["bytes_recv"] for t in traffic],
                     [e["error"] for e in run.events(3)])


def test_gossip_end_to_end_packed_on_asyncio_s_own_loop(tmp_path) -> None:
    out = tmp_path / "run"
    res = run_dsim("launch", "--nodes", "8", "--topology", "ring", "--algorithm", "gossip", "--out", str(out),
                   "--set", "net.event_loop=asyncio", "--nodes-per-process", "3",
                   *[a for s in GOSSIP for a in ("--set", s)])
    assert res.returncode == 0, res.stderr
    s = summary(out)
    assert s["status"] == "ok"
    rows = read_csv(out / "bandwidth.csv")
    assert_consensus(s["results"], [int(r["bytes_sent"]) for r in rows], [int(r["bytes_recv"]) for r in rows],
                     [e["error"] for e in node_events(out, 3) if e["event"] == "metric"])
    assert (out / "config.toml").exists() and all((out / "nodes" / f"{r}.jsonl").exists() for r in range(8))


def test_relays_count_the_bytes_they_forward(tmp_path) -> None:
    out = tmp_path / "run"
    res = run_dsim("launch", "--nodes", "5", "--topology", "ring", "--algorithm", "gather", "--out", str(out),
                   "--set", "rounds=2", "--set", "gather.size=1000", "--nodes-per-process", "2")
    assert res.returncode == 0, res.stderr
    rows = {int(r["rank"]): r for r in read_csv(out / "bandwidth.csv")}
    # ring 0-1-2-3-4-5-0, server 0: shortest paths (ties broken by the lower neighbour) are
    # 0-1-2-3 and 0-5-4, so 1 and 2 relay for 3, 5 relays for 4, and 3 and 4 relay nothing
    for rank in (1, 2, 5):
        assert int(rows[rank]["bytes_relayed"]) > 0
    assert int(rows[3]["bytes_relayed"]) == int(rows[4]["bytes_relayed"]) == 0
    assert int(rows[2]["bytes_sent"]) > int(rows[3]["bytes_sent"])
    assert sum(int(r["bytes_sent"]) for r in rows.values()) == sum(int(r["bytes_recv"]) for r in rows.values())
    by_kind = read_csv(out / "bandwidth_by_kind.csv")
    relayed_replies = [r for r in by_kind if r["rank"] == "1" and r["kind"] == "reply"]
    assert relayed_replies and int(relayed_replies[0]["bytes_sent"]) > 3 * 4000
    assert summary(out)["results"]["replies"] == 10


def test_in_memory_delivery_counts_exactly_what_sockets_count(tmp_path) -> None:
    """Neighbours packed into one process skip ZeroMQ; the frames, relays and byte counts stay the same."""
    tables = {}
    for per_process in (1, 6):
        out = tmp_path / f"run-{per_process}"
        res = run_dsim("launch", "--nodes", "5", "--topology", "ring", "--algorithm", "gather", "--out", str(out),
                       "--set", "rounds=2", "--set", "gather.size=1000", "--nodes-per-process", str(per_process))
        assert res.returncode == 0, res.stderr
        columns = ("role", "bytes_sent", "bytes_recv", "msgs_sent", "msgs_recv", "bytes_relayed")
        tables[per_process] = {r["rank"]: [r[c] for c in columns] for r in read_csv(out / "bandwidth.csv")}
        assert summary(out)["results"]["replies"] == 10
    assert int(tables[6]["1"][-1]) > 0  # node 1 relays for node 3 in memory
    assert tables[6] == tables[1]


def test_a_message_holds_its_arrays_as_they_were_at_send_over_sockets(tmp_path) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests")}
    res = subprocess.run([dsim_script(), "launch", "--nodes", "2", "--topology", "full", "--algorithm",
                          "testprogs.snapshot", "--out", str(out)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert summary(out)["results"]["per_node"]["1"]["minimums"] == [7.0, 7.0, 7.0]


def test_a_message_holds_its_arrays_as_they_were_at_send_in_memory() -> None:
    assert run_program("testprogs.snapshot", nodes=2, topology="full").results[1]["minimums"] == [7.0, 7.0, 7.0]


def launch_background(tmp_path: Path, *args: str, env: dict | None = None) -> tuple[subprocess.Popen, Path]:
    out = tmp_path / "run"
    proc = subprocess.Popen([dsim_script(), "launch", "--out", str(out), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    return proc, out


def test_garbage_on_a_node_port_is_dropped_and_logged(tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests")}
    proc, out = launch_background(tmp_path, "--nodes", "3", "--topology", "ring", "--algorithm",
                                  "testprogs.resilient", "--set", "resilient.drops=2",
                                  "--set", "net.max_message_mb=0.01", env=env)
    try:
        start = wait_for(lambda: [e for e in node_events(out, 0) if e["event"] == "start"], what="node 0 start",
                         proc=proc)
        address = start[0]["address"]
        host, port = address.removeprefix("tcp://").rsplit(":", 1)
        with socket.create_connection((host, int(port))) as raw:  # not even ZeroMQ: the handshake fails
            raw.sendall(os.urandom(4096))
        ctx = zmq.Context()
        intruder = ctx.socket(zmq.DEALER)
        intruder.setsockopt(zmq.LINGER, 1000)
        intruder.connect(address)
        intruder.send_multipart([os.urandom(6)])  # too short to hold a hop
        other_run = msgpack.packb({"v": 1, "r": "another", "s": 1, "d": 0, "k": "ping", "p": None})
        intruder.send_multipart([struct.pack("<II", 1, 0) + other_run])  # a well-formed frame, not from this run
        intruder.close()
        ctx.term()
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    reasons = [e["reason"] for e in node_events(out, 0) if e["event"] == "dropped"]
    assert any("no hop" in r for r in reasons), reasons
    assert any("not from a process of this run" in r for r in reasons), reasons
    assert summary(out)["status"] == "ok"


def endless_gossip(tmp_path: Path, nodes: int, watch: int, *extra: str) -> tuple[subprocess.Popen, Path, dict]:
    """Start a gossip run that only ends when stopped; return once `watch` has done 5 rounds."""
    proc, out = launch_background(tmp_path, "--nodes", str(nodes), "--topology", "ring", "--algorithm", "gossip",
                                  "--set", "rounds=1000000", "--set", "gossip.dim=8", *extra)
    wait_for(lambda: sum(e["event"] == "metric" for e in node_events(out, watch)) >= 5, what=f"node {watch}",
             proc=proc)
    pids = {r: next(e["pid"] for e in node_events(out, r) if e["event"] == "start") for r in range(nodes)}
    return proc, out, pids


def all_gone(pids) -> bool:
    return all(not psutil.pid_exists(p) or psutil.Process(p).status() == psutil.STATUS_ZOMBIE for p in pids)


def test_killing_a_node_fails_the_run_naming_it_and_leaves_nothing(tmp_path) -> None:
    proc, out, pids = endless_gossip(tmp_path, 4, 2)
    try:
        os.kill(pids[2], signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 1
    assert "node 2" in stderr and "SIGKILL" in stderr
    s = summary(out)
    assert s["status"] == "failed" and s["failures"][0]["ranks"] == [2]
    assert all_gone(pids.values())


def test_two_runs_side_by_side(tmp_path) -> None:
    procs = [launch_background(tmp_path / str(i), "--nodes", "4", "--topology", "ring", "--algorithm",
                               "gossip", "--set", "rounds=200", "--set", "gossip.dim=16") for i in range(2)]
    for proc, out in procs:
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        assert summary(out)["results"]["max_error"] < 1e-6
    assert summary(procs[0][1])["run_id"] != summary(procs[1][1])["run_id"]


def test_two_machines_from_one_hosts_file(tmp_path) -> None:
    """Two launchers, each a 'machine' on its own loopback address, run one experiment together."""
    hosts = tmp_path / "hosts"
    port = free_port()
    hosts.write_text("127.0.0.1 slots=3\n127.0.0.2 slots=3\n")
    common = ["--nodes", "5", "--topology", "ring", "--algorithm", "gather", "--hosts", str(hosts),
              "--set", f"net.master_port={port}", "--set", "rounds=2", "--set", "net.secure=off"]
    procs = [launch_background(tmp_path / f"m{i}", *common, "--machine-rank", str(i)) for i in range(2)]
    for proc, _ in procs:
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
    s0, s1 = summary(procs[0][1]), summary(procs[1][1])
    assert s0["status"] == s1["status"] == "ok" and s0["results"]["replies"] == 10
    hosts_of = {r["rank"]: r["host"] for r in read_csv(procs[0][1] / "bandwidth.csv")}
    assert hosts_of["0"] == "127.0.0.1" and hosts_of["5"] == "127.0.0.2"
    assert (procs[1][1] / "nodes" / "4.jsonl").exists() and not (procs[1][1] / "nodes" / "0.jsonl").exists()


def test_machines_with_different_settings_refuse_to_start(tmp_path) -> None:
    hosts = tmp_path / "hosts"
    port = free_port()
    hosts.write_text("127.0.0.1 slots=2\n127.0.0.2 slots=2\n")
    common = ["--nodes", "4", "--topology", "ring", "--algorithm", "gossip", "--hosts", str(hosts),
              "--set", f"net.master_port={port}", "--set", "net.secure=off"]
    procs = [launch_background(tmp_path / f"m{i}", *common, "--machine-rank", str(i), "--set", f"rounds={3 + i}")
             for i in range(2)]
    errors = []
    for proc, _ in procs:
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 2, stderr
        errors.append(stderr)
    assert all("rounds=4 (here 3)" in e for e in errors), errors


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_port_range_in_use_is_refused(tmp_path) -> None:
    blockers = []
    base = free_port()
    try:
        for port in range(base, base + 3):
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                pass
            blockers.append(s)
        res = run_dsim("launch", "--nodes", "4", "--topology", "ring", "--algorithm", "gossip",
                       "--set", f"net.ports={base}-{base + 2}", "--out", str(tmp_path / "r"))
    finally:
        for s in blockers:
            s.close()
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "port range" in res.stderr


@pytest.mark.parametrize("args, message", [
    (["--topology", "nope"], "unknown topology"),
    (["--nodes", "0"], "expects int >= 1"),
    (["--algorithm", "nope"], "unknown algorithm"),
    (["--hosts", "BADHOSTS"], "expected 'HOST slots=N'"),
    (["--topology", "DISCONNECTED"], "disconnected"),
    (["--set", "rounds=x"], "expects int"),
    (["--config", "MISSING.toml"], "does not exist"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message) -> None:
    (tmp_path / "hosts").write_text("localhost slots=two\n")
    (tmp_path / "g.edges").write_text("4\n0 1\n2 3\n")
    args = [a.replace("BADHOSTS", str(tmp_path / "hosts")).replace("DISCONNECTED", str(tmp_path / "g.edges"))
            .replace("MISSING.toml", str(tmp_path / "missing.toml")) for a in args]
    algorithm = [] if "--algorithm" in args else ["--algorithm", "gossip"]
    res = run_dsim("launch", *algorithm, *args, "--out", str(tmp_path / "r"))
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith("dsim: error:") and res.stderr.count("\n") == 1, res.stderr
    assert message in res.stderr.lower() or message in res.stderr
    assert "Traceback" not in res.stderr


def test_a_frozen_node_is_detected_as_silent(tmp_path) -> None:
    proc, out, pids = endless_gossip(tmp_path, 4, 1, "--set", "net.heartbeat=0.2",
                                     "--set", "net.heartbeat_timeout=3")
    try:
        os.kill(pids[1], signal.SIGSTOP)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
        for pid in pids.values():
            if psutil.pid_exists(pid):
                os.kill(pid, signal.SIGCONT)
    assert proc.returncode == 1
    assert "node 1 stopped answering" in stderr
    assert all_gone(pids.values())


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_stops_every_process_and_keeps_the_summary(tmp_path, sig) -> None:
    proc, out, pids = endless_gossip(tmp_path, 3, 0)
    try:
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert summary(out)["status"] == "interrupted"
    assert all_gone(pids.values())


def test_machines_with_different_data_files_refuse_to_start(tmp_path, mnist_dir) -> None:
    """Machine 1 holds an altered MNIST file: it refuses up front naming the file; machine 0 gives up."""
    import shutil

    altered = tmp_path / "data" / "mnist"
    altered.mkdir(parents=True)
    for f in (mnist_dir / "mnist").iterdir():
        shutil.copy(f, altered / f.name)
    labels = altered / "t10k-labels-idx1-ubyte.gz"
    labels.chmod(0o644)
    with open(labels, "r+b") as fh:
        fh.seek(100)
        fh.write(b"\x00\x01\x02")
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 slots=2\n127.0.0.2 slots=2\n")
    common = ["--nodes", "3", "--topology", "star", "--algorithm", "base", "--dataset", "mnist", "--hosts", str(hosts),
              "--set", f"net.master_port={free_port()}", "--set", "net.start_timeout=15", "--set", "net.secure=off"]
    procs = [launch_background(tmp_path / f"m{i}", *common, "--machine-rank", str(i),
                               "--data-dir", str(mnist_dir if i == 0 else tmp_path / "data")) for i in range(2)]
    errors = []
    for proc, _ in procs:
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode != 0
        errors.append(stderr)
    assert "t10k-labels-idx1-ubyte.gz" in errors[1] and "MD5" in errors[1].upper(), errors[1]
    assert "machine 1" in errors[0], errors[0]


def test_a_failed_run_under_quiet_prints_its_failure_line_and_keeps_its_files(tmp_path) -> None:
    out = tmp_path / "run"
    proc = subprocess.run([dsim_script(), "launch", "--nodes", "4", "--topology", "ring", "--algorithm",
                           "testprogs.failing", "--set", "rounds=1000", "--out", str(out), "--quiet"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO / "tests")})
    assert proc.returncode == 1 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert lines == ["dsim: error: node 1 failed: ValueError: node 1 gives up on purpose (at failing.py:13)"], lines
    result = summary(out)
    assert result["status"] == "failed" and result["failures"][0]["ranks"] == [1]
    assert (out / "config.toml").exists() and "error" in [e["event"] for e in node_events(out, 1)]


def test_ctrl_c_just_after_the_fork_stops_the_run_as_interrupted(tmp_path) -> None:
    """The press lands before the coordinator's loop exists: it is held, then stops the run cleanly."""
    proc, out = launch_background(tmp_path, "--nodes", "3", "--topology", "ring", "--algorithm", "gossip",
                                  "--set", "rounds=1000000")
    try:
        ready, _, _ = select.select([proc.stderr], [], [], 60)
        assert ready, "no line from the launcher in 60 s"
        first = proc.stderr.readline()  # printed once every worker is forked, before the coordinator starts
        assert "results in" in first, first
        workers = [c.pid for c in psutil.Process(proc.pid).children()]
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    assert summary(out)["status"] == "interrupted"
    assert workers and all_gone(workers)
