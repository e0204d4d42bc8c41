"""`dsim launch --hosts F` on machine 0 starts every machine over real SSH, and ends them together.

Two hosts are network namespaces joined by a veth pair, each running its own `sshd` on its address
(throwaway host and user keys in tmp_path, key-only root login). The launcher runs on host A and reaches
B only through ssh, with the client options passed by --ssh-opts. What each test leaves is read with
`ip netns pids`: nothing but the sshd listeners. Skipped, with the reason, where namespaces cannot be
made or sshd is not installed or does not start (.ci/run installs openssh-server).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import dsim_script, ip, namespace_pids, node_events, read_csv, summary, two_namespaces

ADDRESSES = ("10.231.8.1", "10.231.8.2")
NOWHERE = "10.231.9.2"  # host A routes it through B, which forwards nothing: a connection times out
GOSSIP = ["--topology", "ring", "--algorithm", "gossip", "--set", "rounds=1000000", "--set", "gossip.dim=8"]

SSHD_CONFIG = """\
ListenAddress {address}
HostKey {keys}/host_key
AuthorizedKeysFile {keys}/user_key.pub
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile none
LogLevel ERROR
"""


@dataclass
class SshHosts:
    spaces: tuple[str, str]
    opts: str  # what --ssh-opts passes: the throwaway key and known-hosts file
    listeners: set[int]

    def launch(self, cwd: Path, *args: str) -> subprocess.Popen:
        """`dsim launch ARGS` on host A."""
        return subprocess.Popen(["ip", "netns", "exec", self.spaces[0], dsim_script(), "launch", "--ssh-opts",
                                 self.opts, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)

    def left(self) -> set[int]:
        """Processes on either host besides the sshd listeners."""
        return (namespace_pids(self.spaces[0]) | namespace_pids(self.spaces[1])) - self.listeners

    def assert_nothing_left(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while self.left() and time.monotonic() < deadline:
            time.sleep(0.2)
        left = self.left()
        assert not left, [_describe(pid) for pid in left]


def _describe(pid: int) -> str:
    try:
        return f"{pid}: " + Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return str(pid)


@pytest.fixture
def ssh_hosts(tmp_path):
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.path.exists(sshd) or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        pytest.skip("sshd or ssh is not installed (Debian: openssh-server; .ci/run installs it)")
    with two_namespaces(ADDRESSES) as spaces:
        keys = tmp_path / "ssh"
        keys.mkdir()
        for name in ("host_key", "user_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name)], check=True,
                           timeout=30)
        os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege separation directory
        daemons = []
        try:
            for ns, address in zip(spaces, ADDRESSES, strict=True):
                config = keys / f"sshd-{address}"
                config.write_text(SSHD_CONFIG.format(address=address, keys=keys))
                with open(keys / f"sshd-{address}.log", "w") as log:
                    daemons.append(subprocess.Popen(["ip", "netns", "exec", ns, sshd, "-D", "-e", "-f", str(config)],
                                                    stdin=subprocess.DEVNULL, stdout=log, stderr=log))
            assert ip("-n", spaces[0], "route", "add", f"{NOWHERE}/32", "via", ADDRESSES[1]).returncode == 0
            opts = (f"-i {keys / 'user_key'} -o UserKnownHostsFile={keys / 'known_hosts'} "
                    f"-o StrictHostKeyChecking=no -o LogLevel=ERROR")
            hosts = SshHosts(spaces, opts, {d.pid for d in daemons})  # `ip netns exec` execs sshd: same pid
            for ns, address in zip(spaces, reversed(ADDRESSES), strict=True):
                _wait_for_sshd(ns, address, opts, daemons, keys)
            yield hosts
        finally:
            for daemon in daemons:
                daemon.terminate()
                try:
                    daemon.wait(5)
                except subprocess.TimeoutExpired:
                    daemon.kill()
                    daemon.wait()


def _wait_for_sshd(ns: str, address: str, opts: str, daemons: list[subprocess.Popen], keys: Path) -> None:
    """Until an ssh from `ns` to `address` gets in; skips, with sshd's own words, if it never does."""
    deadline = time.monotonic() + 15
    while True:
        res = subprocess.run(["ip", "netns", "exec", ns, "ssh", *opts.split(), "-o", "BatchMode=yes",
                              "-o", "ConnectTimeout=2", address, "true"], capture_output=True, text=True, timeout=30)
        if res.returncode == 0:
            return
        if time.monotonic() > deadline or any(d.poll() is not None for d in daemons):
            logs = " ".join(p.read_text().strip() for p in keys.glob("sshd-*.log"))
            pytest.skip(f"sshd did not start here: {res.stderr.strip()} {logs}".strip())
        time.sleep(0.2)


def write_hosts(tmp_path: Path, slots: int, second: str = ADDRESSES[1]) -> str:
    path = tmp_path / "hosts"
    path.write_text(f"{ADDRESSES[0]} slots={slots}\n{second} slots={slots}\n")
    return str(path)


def wait_for_rounds(run_dir: Path, rank: int, proc: subprocess.Popen, timeout: float = 60.0) -> int:
    """Once node `rank` has done 5 rounds, its pid (a launch that exits before fails at once)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = node_events(run_dir, rank)
        if sum(e["event"] == "metric" for e in events) >= 5:
            return next(e["pid"] for e in events if e["event"] == "start")
        if proc.poll() is not None:
            raise AssertionError(f"the launch exited ({proc.returncode}): {proc.stderr.read()}")
        time.sleep(0.1)
    raise AssertionError(f"node {rank} did not run 5 rounds in {timeout:g} s")


def test_one_command_runs_a_ring_on_both_hosts(tmp_path, ssh_hosts) -> None:
    """No --launcher: the hosts file's first line starts the second host over ssh (on the default port)."""
    proc = ssh_hosts.launch(tmp_path, "--nodes", "5", "--topology", "ring", "--algorithm", "gather",
                            "--hosts", write_hosts(tmp_path, 3), "--set", "rounds=2", "--out", str(tmp_path / "run"))
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    first, second = summary(tmp_path / "run"), summary(tmp_path / "run-m1")
    assert first["status"] == second["status"] == "ok" and first["run_id"] == second["run_id"]
    assert first["results"]["replies"] == 10
    assert {int(r["rank"]): r["host"] for r in read_csv(tmp_path / "run" / "bandwidth.csv")}[5] == ADDRESSES[1]
    nodes_b = tmp_path / "run-m1" / "nodes"
    assert (nodes_b / "5.jsonl").exists() and not (nodes_b / "0.jsonl").exists()
    assert f"starting 1 more machine over ssh: {ADDRESSES[1]}" in stderr
    ssh_hosts.assert_nothing_left()


def test_killing_a_node_on_the_other_host_ends_both_machines(tmp_path, ssh_hosts) -> None:
    proc = ssh_hosts.launch(tmp_path, "--nodes", "4", *GOSSIP, "--hosts", write_hosts(tmp_path, 2),
                            "--out", str(tmp_path / "run"))
    try:
        pid = wait_for_rounds(tmp_path / "run-m1", 3, proc)
        assert pid in namespace_pids(ssh_hosts.spaces[1])
        os.kill(pid, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 1, stderr
    assert "dsim: error: node 3 (pid" in stderr and "SIGKILL" in stderr
    assert f"[{ADDRESSES[1]}] dsim: error: node 3" in stderr  # machine 1's own line, relayed with its host
    assert summary(tmp_path / "run")["status"] == summary(tmp_path / "run-m1")["status"] == "failed"
    ssh_hosts.assert_nothing_left()


def test_ctrl_c_stops_both_machines(tmp_path, ssh_hosts) -> None:
    proc = ssh_hosts.launch(tmp_path, "--nodes", "4", *GOSSIP, "--hosts", write_hosts(tmp_path, 2),
                            "--out", str(tmp_path / "run"))
    try:
        wait_for_rounds(tmp_path / "run-m1", 3, proc)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert summary(tmp_path / "run")["status"] == summary(tmp_path / "run-m1")["status"] == "interrupted"
    ssh_hosts.assert_nothing_left()


def test_a_killed_launcher_leaves_nothing_on_either_host(tmp_path, ssh_hosts) -> None:
    """SIGKILL gives the launcher no chance to clean up: every child stops when its stdin closes."""
    proc = ssh_hosts.launch(tmp_path, "--nodes", "4", *GOSSIP, "--hosts", write_hosts(tmp_path, 2),
                            "--out", str(tmp_path / "run"))
    try:
        wait_for_rounds(tmp_path / "run-m1", 3, proc)
        proc.kill()
        proc.communicate(timeout=30)
    finally:
        proc.kill()
    ssh_hosts.assert_nothing_left()


def test_a_machine_that_fails_to_start_stops_the_run_at_once(tmp_path, ssh_hosts) -> None:
    """Host B's node ports are taken there: its launcher refuses; machine 0 hears of it from the ssh
    session at once, not after net.start_timeout."""
    ports = (29811, 29812)
    code = (f"import socket, time; s = [socket.socket() for _ in {ports}]; "
            f"[x.bind(('{ADDRESSES[1]}', p)) for x, p in zip(s, {ports})]; print('bound', flush=True); "
            f"time.sleep(300)")
    blocker = subprocess.Popen(["ip", "netns", "exec", ssh_hosts.spaces[1], sys.executable, "-c", code],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert blocker.stdout.readline().strip() == "bound"
        started = time.monotonic()
        proc = ssh_hosts.launch(tmp_path, "--nodes", "4", *GOSSIP, "--hosts", write_hosts(tmp_path, 2),
                                "--set", f"net.ports={ports[0]}-{ports[1]}", "--set", "net.start_timeout=100",
                                "--out", str(tmp_path / "run"))
        _, stderr = proc.communicate(timeout=90)
    finally:
        blocker.kill()
        blocker.wait()
    assert proc.returncode == 1, stderr
    assert (f"dsim: error: machine 1: {ADDRESSES[1]}: its launcher exited with code 2: dsim: error: port range "
            f"{ports[0]}-{ports[1]} has 0 free ports on {ADDRESSES[1]}") in stderr, stderr
    assert time.monotonic() - started < 40
    ssh_hosts.assert_nothing_left()


def test_an_unreachable_host_is_one_line_naming_it_within_the_timeout(tmp_path, ssh_hosts) -> None:
    started = time.monotonic()
    proc = ssh_hosts.launch(tmp_path, "--nodes", "4", *GOSSIP, "--hosts", write_hosts(tmp_path, 2, NOWHERE),
                            "--ssh-opts", f"{ssh_hosts.opts} -o ConnectTimeout=2", "--out", str(tmp_path / "run"))
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2, stderr
    assert stderr.count("\n") == 1 and stderr.startswith(f"dsim: error: cannot reach machine 1 ({NOWHERE}) over ssh")
    assert "timed out" in stderr and "ConnectTimeout=2" in stderr, stderr
    assert time.monotonic() - started < 30
    assert not (tmp_path / "run").exists()
    ssh_hosts.assert_nothing_left()


def test_a_hosts_file_without_this_machine_is_one_line(tmp_path) -> None:
    """Needs no sshd: refused before any ssh starts."""
    hosts = tmp_path / "hosts"
    hosts.write_text("10.231.99.1 slots=2\n10.231.99.2 slots=2\n")
    res = subprocess.run([dsim_script(), "launch", "--nodes", "4", *GOSSIP, "--hosts", str(hosts), "--launcher",
                          "ssh", "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert res.stderr == (f"dsim: error: hosts file {hosts} does not list this machine (by name or address); "
                          f"--launcher ssh starts the run from machine 0, the first line\n")
    assert not (tmp_path / "run").exists()
