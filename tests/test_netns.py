"""Two hosts made of network namespaces joined by a veth pair, each running its own `dsim launch`.

Each launcher finds its own line of the hosts file from its addresses (no --machine-rank); `--launcher
none` because each machine is started by hand here (machine 0 would otherwise start the other over SSH:
tests/test_ssh.py). Skipped, with the reason, where namespaces cannot be made (not root, no iproute2, no
permission in a container).
"""

from __future__ import annotations

import subprocess

import pytest

from conftest import dsim_script, summary, two_namespaces

ADDRESSES = ("10.231.7.1", "10.231.7.2")


@pytest.fixture
def two_hosts():
    with two_namespaces(ADDRESSES) as spaces:
        yield spaces


def test_two_namespace_hosts_run_one_experiment(tmp_path, two_hosts) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text(f"# two hosts\n{ADDRESSES[0]} slots=3\n{ADDRESSES[1]} slots=3\n")
    args = ["launch", "--nodes", "5", "--topology", "ring", "--algorithm", "gather", "--hosts", str(hosts),
            "--set", "rounds=2", "--set", "net.master_port=29731", "--launcher", "none",
            "--set", "net.secure=off"]  # by hand, without a key file (the secure ring: tests/test_secure.py)
    procs = [subprocess.Popen(["ip", "netns", "exec", ns, dsim_script(), *args, "--out", str(tmp_path / ns)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for ns in two_hosts]
    outputs = [p.communicate(timeout=120) for p in procs]
    for proc, (_, stderr) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, stderr
    first, second = (summary(tmp_path / ns) for ns in two_hosts)
    assert first["status"] == second["status"] == "ok"
    assert first["results"]["replies"] == 10
    rows = (tmp_path / two_hosts[0] / "bandwidth.csv").read_text().splitlines()
    assert any(f",{ADDRESSES[1]}," in row for row in rows)
