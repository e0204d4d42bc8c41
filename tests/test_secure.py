"""`net.secure`: CurveZMQ on every socket, with real processes, sockets, key files and packet captures.

An outsider that knows the run id and every port but not the run key gets nothing delivered to a node
or to the coordinator, and each connection it tries is dropped and counted while the run goes on; a
sniffer on the loopback interface (or inside a namespaced host) sees no byte of a known array, and the
same sniffer does see it with `net.secure=off`, so the captures can fail. Two network-namespaced hosts
run a secure ring from a key file, and one started over SSH carries the key on stdin. A key file that
others may read is refused in one line. The captures and namespaces need root; they skip otherwise.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import zmq
import zmq.asyncio
from test_launch import free_port, wait_for
from test_ssh import ssh_hosts as hosts_over_ssh  # noqa: F401  (a fixture: two namespaced hosts with sshd)
from test_ssh import write_hosts

from conftest import REPO, dsim_script, node_events, run_dsim, summary, two_namespaces
from dsim import secure, wire
from dsim.errors import DsimError
from dsim.hub import Hub
from dsim.routing import Routes
from dsim.transport import Endpoint
from testprogs.pattern import MARKER

TESTS = REPO / "tests"
ENV = {**os.environ, "PYTHONPATH": str(TESTS)}
ADDRESSES = ("10.231.10.1", "10.231.10.2")
MAX_BYTES = 1 << 16


# --- the run key and its file -----------------------------------------------------------------------

def test_a_key_file_round_trips_and_bad_ones_are_refused(tmp_path) -> None:
    key = secure.generate()
    path = tmp_path / "run.key"
    secure.write_key_file(path, key)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert secure.read_key_file(path) == key
    assert key.secret.decode() not in repr(key)
    with pytest.raises(DsimError, match="exists"):
        secure.write_key_file(path, secure.generate())
    other = secure.generate()
    forged = tmp_path / "forged.key"
    forged.write_text(f'curve\n    public-key = "{other.public.decode()}"\n    secret-key = "{key.secret.decode()}"\n')
    forged.chmod(0o600)
    with pytest.raises(DsimError, match="does not belong"):
        secure.read_key_file(forged)
    junk = tmp_path / "junk.key"
    junk.write_text("not a key\n")
    junk.chmod(0o600)
    with pytest.raises(DsimError, match="holds no CURVE keypair"):
        secure.read_key_file(junk)
    assert secure.run_key("auto", "", 1) is None and secure.run_key("off", str(path), 3) is None
    assert secure.run_key("auto", str(path), 2) == key and secure.run_key("on", "", 1) is not None


def test_a_key_file_others_can_read_is_refused_in_one_line(tmp_path) -> None:
    key = tmp_path / "run.key"
    made = run_dsim("keygen", str(key))
    assert made.returncode == 0, made.stderr
    key.chmod(0o644)
    res = run_dsim("launch", "--nodes", "2", "--topology", "full", "--algorithm", "gather",
                   "--set", "net.secure=on", "--set", f"net.key_file={key}", "--out", str(tmp_path / "run"))
    assert res.returncode == 2
    assert res.stderr == (f"dsim: error: net.key_file {key} is open to other users (mode 644): "
                          f"chmod 600 {key}\n")
    assert not (tmp_path / "run").exists()  # refused before anything started


def test_machines_started_by_hand_without_a_key_file_are_refused_in_one_line(tmp_path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 slots=2\n127.0.0.2 slots=2\n")
    res = run_dsim("launch", "--nodes", "3", "--topology", "ring", "--algorithm", "gather", "--hosts", str(hosts),
                   "--machine-rank", "0", "--set", f"net.master_port={free_port()}", "--out", str(tmp_path / "run"))
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "net.secure is auto for a run over 2 machines" in res.stderr and "dsim keygen FILE" in res.stderr
    assert not (tmp_path / "run").exists()


# --- hubs in one process ---------------------------------------------------------------------------

class Log:
    def __init__(self, dropped: asyncio.Event) -> None:
        self.events: list[tuple[str, dict]] = []
        self.dropped = dropped

    def __call__(self, event: str, **fields) -> None:
        self.events.append((event, fields))
        if event == "dropped":
            self.dropped.set()

    def reasons(self) -> list[str]:
        return [f["reason"] for e, f in self.events if e == "dropped"]


async def _wait_for_reason(log: Log, text: str, timeout: float = 10.0) -> None:
    async def seen() -> None:
        while not any(text in r for r in log.reasons()):
            log.dropped.clear()
            await log.dropped.wait()

    try:
        await asyncio.wait_for(seen(), timeout)
    except TimeoutError:
        raise AssertionError(f"no drop for '{text}' in {timeout:g} s: {log.reasons()}") from None


def test_secure_hubs_deliver_and_refuse_everyone_without_the_key() -> None:
    """Two hubs with the run key exchange messages (a frame at the size limit still reaches the node's
    own check: CURVE's overhead is allowed for); a plain peer and a CURVE peer with another key are
    refused at the handshake, each refusal logged and counted by the first node."""
    async def main():
        key = secure.generate()
        ctx = zmq.asyncio.Context()
        gate = secure.Gate(ctx, key)
        graph = nx.path_graph(2)
        hubs = [Hub(ctx, MAX_BYTES, key) for _ in range(2)]
        for hub in hubs:
            hub.bind("127.0.0.1", None)
        logs = {r: Log(asyncio.Event()) for r in graph.nodes}
        eps = {r: Endpoint(hubs[r], r, tuple(graph.neighbors(r)), Routes(graph, r), MAX_BYTES, logs[r])
               for r in graph.nodes}
        for r in graph.nodes:
            hubs[r].attach(eps[r])
        addresses = {r: hubs[r].address for r in graph.nodes}
        outsiders = []
        try:
            for hub in hubs:
                hub.connect("run-secure-test", addresses)
            for ep in eps.values():
                ep.connect("run-secure-test", {})
            await asyncio.gather(*(ep.say_hello(10.0) for ep in eps.values()))
            await eps[1].send(0, "x", np.arange(1000.0))
            got = await eps[0].mailbox.get("x", 1, 10.0, lambda: "node 0")
            header = wire.encode("run-secure-test", 1, 0, "x", None)[0]
            await hubs[1]._outlets[hubs[0].address].dealer.send_multipart([struct.pack("<II", 1, 0) + header,
                                                                     b"x" * MAX_BYTES])
            await _wait_for_reason(logs[0], "too large")
            # the plain peer is refused on the mechanism (or breaks off on seeing CURVE asked); the CURVE
            # peer under a key of its own fails to prove it holds the run's
            for curve, expected in ((False, "failed the CURVE handshake"), (True, "a peer without the run key")):
                sock = ctx.socket(zmq.DEALER)
                sock.setsockopt(zmq.LINGER, 0)
                sock.setsockopt(zmq.IDENTITY, f"run-secure-test|{hubs[1].address}".encode())
                if curve:
                    secure.dial(sock, secure.generate())
                sock.connect(hubs[0].address)
                await sock.send_multipart([struct.pack("<II", 1, 0) + header])
                outsiders.append(sock)
                await _wait_for_reason(logs[0], expected)
            return got, eps[0].counters
        finally:
            for sock in outsiders:
                sock.close(linger=0)
            for ep in eps.values():
                ep.close()
            for hub in hubs:
                hub.close()
            gate.stop()
            ctx.term()

    got, counters = asyncio.run(main())
    np.testing.assert_array_equal(got.payload, np.arange(1000.0))
    assert counters.by_kind["x"].msgs_recv == 1  # the outsiders' copies of the same frames never arrived
    assert counters.msgs_dropped >= 3


# --- an outsider against a running experiment -------------------------------------------------------

def _start_intrusion(tmp_path: Path, mode: str) -> tuple[subprocess.Popen, Path, int]:
    hosts, port, out = tmp_path / "hosts", free_port(), tmp_path / "run"
    hosts.write_text("127.0.0.1 slots=2\n")  # one machine, but the coordinator listens on TCP
    proc = subprocess.Popen([dsim_script(), "launch", "--nodes", "2", "--topology", "full", "--algorithm",
                             "testprogs.intrusion", "--hosts", str(hosts), "--set", f"net.master_port={port}",
                             "--set", f"net.secure={mode}", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    return proc, out, port


def _intrude(out: Path, port: int, proc: subprocess.Popen) -> None:
    """The outsider, as its own process: it reads the run id and the ports, never the key."""
    target = wait_for(lambda: [e for e in node_events(out, 0) if e["event"] == "target"], what="node 0's run id",
                      proc=proc)[0]
    peer = wait_for(lambda: [e for e in node_events(out, 1) if e["event"] == "start"], what="node 1", proc=proc)[0]
    done = subprocess.run([sys.executable, str(TESTS / "intruder.py"), target["run"], target["address"],
                           peer["address"], f"tcp://127.0.0.1:{port}"], capture_output=True, text=True,
                          timeout=60, env=ENV)
    assert done.stdout.strip() == "sent", done.stderr


def _intruded_run(tmp_path: Path, mode: str) -> tuple[int, str, Path]:
    """A run with net.secure=`mode` that the outsider attacks: (its exit code, its stderr, its run dir)."""
    proc, out, port = _start_intrusion(tmp_path, mode)
    try:
        _intrude(out, port, proc)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    return proc.returncode, stderr, out


def test_an_outsider_without_the_key_gets_nothing_delivered_and_is_counted(tmp_path) -> None:
    code, stderr, out = _intruded_run(tmp_path, "on")
    assert code == 0, stderr  # its Lost never reached the coordinator: the run went on
    s = summary(out)
    assert s["status"] == "ok" and s["secure"] is True
    node0 = s["results"]["per_node"]["0"]
    assert "injected" not in node0["kinds"] and node0["dropped"] >= 2
    reasons = [e["reason"] for e in node_events(out, 0) if e["event"] == "dropped"]
    # the plain peer: refused on the mechanism, or it breaks off first on seeing CURVE asked
    assert any("a plain (not CURVE) ZeroMQ peer" in r or "broke it off" in r for r in reasons), reasons
    assert any("a peer without the run key" in r for r in reasons), reasons
    assert all(r.startswith("failed the CURVE handshake") for r in reasons), reasons
    assert any("connections to the coordinator were refused: " in w and "a peer without the run key" in w
               for w in s["warnings"]), s


def test_the_same_outsider_without_curve_stops_the_run(tmp_path) -> None:
    """net.secure=off: the outsider's control message is taken at its word (what the key prevents)."""
    code, stderr, out = _intruded_run(tmp_path, "off")
    assert code == 1, stderr
    assert "an outsider stopped the run" in stderr
    assert summary(out)["secure"] is False


# --- what a sniffer sees ----------------------------------------------------------------------------

def _dropped(run_dir: Path) -> list[dict]:
    """Every `dropped` event of a run directory's nodes: a run among key holders refuses no one."""
    return [e for log in (run_dir / "nodes").glob("*.jsonl") for e in map(json.loads, log.read_text().splitlines())
            if e["event"] == "dropped"]


class Capture:
    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.result: dict = {}

    def stop(self) -> dict:
        if not self.result:
            stdout, stderr = self.proc.communicate(input="", timeout=60)  # stdin closes: it reports
            assert self.proc.returncode == 0, stderr
            self.result = json.loads(stdout.strip().splitlines()[-1])
        return self.result


@contextmanager
def sniffing(iface: str, ns: str | None = None) -> Iterator[Capture]:
    """A raw AF_PACKET capture in its own process (inside `ns` if given); skips where not allowed."""
    command = [sys.executable, str(TESTS / "sniff.py"), iface, MARKER.hex()]
    if ns is not None:
        command = ["ip", "netns", "exec", ns, *command]
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    if proc.stdout.readline().strip() != "ready":  # it prints `ready` once bound, or exits
        _, err = proc.communicate(timeout=30)
        if "PermissionError" in err or "Operation not permitted" in err:
            pytest.skip("raw packet capture needs root (CAP_NET_RAW)")
        raise AssertionError(f"the sniffer did not start: {err}")
    capture = Capture(proc)
    try:
        yield capture
    finally:
        if proc.poll() is None and not capture.result:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("mode", ["on", "off"])
def test_a_sniffer_on_loopback_sees_the_known_array_only_without_curve(tmp_path, mode) -> None:
    with sniffing("lo") as capture:
        res = subprocess.run([dsim_script(), "launch", "--nodes", "2", "--topology", "full", "--algorithm",
                              "testprogs.pattern", "--set", "rounds=3", "--set", f"net.secure={mode}",
                              "--out", str(tmp_path / "run"), "--quiet"],
                             capture_output=True, text=True, timeout=120, env=ENV)
        seen = capture.stop()
    assert res.returncode == 0, res.stderr
    assert seen["bytes"] > 2 * 3 * len(MARKER) * 4096  # the run's traffic passed while capturing
    assert not _dropped(tmp_path / "run")
    if mode == "on":
        assert seen["hits"] == 0, seen
    else:
        assert seen["hits"] > 0, seen  # the capture can tell: in clear, the array is there


def test_two_namespaced_hosts_run_a_secure_ring_from_a_key_file(tmp_path) -> None:
    """Started by hand on each host with the same key file (auto: secure over two machines); a sniffer
    on host A's interfaces, the veth to host B included, sees none of the array."""
    key = tmp_path / "run.key"
    assert run_dsim("keygen", str(key)).returncode == 0
    hosts = tmp_path / "hosts"
    hosts.write_text(f"{ADDRESSES[0]} slots=2\n{ADDRESSES[1]} slots=2\n")
    args = ["launch", "--nodes", "4", "--topology", "ring", "--algorithm", "testprogs.pattern", "--hosts",
            str(hosts), "--set", "rounds=3", "--set", f"net.master_port={free_port()}", "--launcher", "none",
            "--set", f"net.key_file={key}", "--quiet"]
    with two_namespaces(ADDRESSES) as spaces, sniffing("any", spaces[0]) as capture:
        procs = [subprocess.Popen(["ip", "netns", "exec", ns, dsim_script(), *args, "--out", str(tmp_path / ns)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
                 for ns in spaces]
        outputs = [p.communicate(timeout=120) for p in procs]
        seen = capture.stop()
    for proc, (_, stderr) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, stderr
    first, second = (summary(tmp_path / ns) for ns in spaces)
    assert first["status"] == second["status"] == "ok" and first["secure"] is second["secure"] is True
    assert not first["warnings"] and not _dropped(tmp_path / spaces[0]) and not _dropped(tmp_path / spaces[1])
    assert seen["hits"] == 0 and seen["bytes"] > 3 * len(MARKER) * 4096, seen
    secret = secure.read_key_file(key).secret.decode()
    for path in tmp_path.glob("dsim*/**/*"):  # the run directories: config, summary, node logs
        assert not path.is_file() or secret not in path.read_text(errors="replace"), path


def test_the_ssh_launcher_gives_every_machine_the_run_key(tmp_path, hosts_over_ssh) -> None:  # noqa: F811
    """No key file: machine 0's launcher makes the key and sends it on each machine's stdin (by hand,
    the same run is refused)."""
    proc = hosts_over_ssh.launch(tmp_path, "--nodes", "3", "--topology", "ring", "--algorithm", "gather",
                            "--hosts", write_hosts(tmp_path, 2), "--set", "rounds=2", "--out", str(tmp_path / "run"))
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    first, second = summary(tmp_path / "run"), summary(tmp_path / "run-m1")
    assert first["status"] == second["status"] == "ok" and first["secure"] is second["secure"] is True
    assert first["run_id"] == second["run_id"] and not first["warnings"]
    assert not _dropped(tmp_path / "run") and not _dropped(tmp_path / "run-m1")  # no refusal among its own
    hosts_over_ssh.assert_nothing_left()
