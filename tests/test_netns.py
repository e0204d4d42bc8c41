"""Two hosts made of network namespaces joined by a veth pair, each running its own `dsim launch`.

Each launcher finds its own line of the hosts file from its addresses (no --machine-rank). Skipped, with
the reason, where namespaces cannot be made (not root, no iproute2, no permission in a container).
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from conftest import dsim_script, summary

ADDRESSES = ("10.231.7.1", "10.231.7.2")


def ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture
def two_hosts():
    if shutil.which("ip") is None:
        pytest.skip("iproute2's `ip` is not installed")
    tag = f"{os.getpid() % 100000}"
    spaces, links = (f"dsim{tag}a", f"dsim{tag}b"), (f"dv{tag}a", f"dv{tag}b")
    steps = [
        ("netns", "add", spaces[0]), ("netns", "add", spaces[1]),
        ("link", "add", links[0], "type", "veth", "peer", "name", links[1]),
        ("link", "set", links[0], "netns", spaces[0]), ("link", "set", links[1], "netns", spaces[1]),
    ]
    for ns, link, addr in zip(spaces, links, ADDRESSES, strict=True):
        steps += [("-n", ns, "addr", "add", f"{addr}/24", "dev", link), ("-n", ns, "link", "set", link, "up"),
                  ("-n", ns, "link", "set", "lo", "up")]
    try:
        for step in steps:
            res = ip(*step)
            if res.returncode != 0:
                pytest.skip(f"cannot build network namespaces here: `ip {' '.join(step)}`: {res.stderr.strip()}")
        yield spaces
    finally:
        for ns in spaces:
            ip("netns", "del", ns)


def test_two_namespace_hosts_run_one_experiment(tmp_path, two_hosts) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text(f"# two hosts\n{ADDRESSES[0]} slots=3\n{ADDRESSES[1]} slots=3\n")
    args = ["launch", "--nodes", "5", "--topology", "ring", "--algorithm", "gather", "--hosts", str(hosts),
            "--set", "rounds=2", "--set", "net.master_port=29731"]
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
