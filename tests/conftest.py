"""Shared helpers: the real `dsim` console script, run directories, the ../shared data folder, and hosts
made of network namespaces."""

from __future__ import annotations

import csv
import itertools
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def dsim_script() -> str:
    """The installed `dsim` console script. Missing means a broken install: the end-to-end tests fail
    (a skip would let the CLI path pass green untested)."""
    script = Path(sys.executable).parent / "dsim"
    found = str(script) if script.exists() else shutil.which("dsim")
    if found is None:
        pytest.fail(f"the dsim console script is not installed next to {sys.executable} nor on PATH: "
                    f"the install is broken (pip install -e .)", pytrace=False)
    return found


def run_dsim(*args: str, timeout: float = 120, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `dsim ARGS` as a real process; a hang fails the test instead of blocking it."""
    return subprocess.run([dsim_script(), *args], capture_output=True, text=True, timeout=timeout, cwd=cwd)


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def read_csv(path: Path) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def node_events(run_dir: Path, rank: int) -> list[dict]:
    path = run_dir / "nodes" / f"{rank}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def mnist_dir() -> Path:
    folder = SHARED / "data"
    if not (folder / "mnist" / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"real MNIST not found under {folder} (the shared data folder is absent on this machine)")
    return folder


def ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


_NAMESPACES = itertools.count()


@contextmanager
def two_namespaces(addresses: tuple[str, str]) -> Iterator[tuple[str, str]]:
    """Two hosts: network namespaces joined by a veth pair, with these addresses (a /24). Skips the test,
    with the reason, where namespaces cannot be made (not root, no iproute2, no permission)."""
    if shutil.which("ip") is None:
        pytest.skip("iproute2's `ip` is not installed")
    tag = f"{os.getpid() % 100000}{next(_NAMESPACES)}"
    spaces, links = (f"dsim{tag}a", f"dsim{tag}b"), (f"dv{tag}a", f"dv{tag}b")
    steps = [
        ("netns", "add", spaces[0]), ("netns", "add", spaces[1]),
        ("link", "add", links[0], "type", "veth", "peer", "name", links[1]),
        ("link", "set", links[0], "netns", spaces[0]), ("link", "set", links[1], "netns", spaces[1]),
    ]
    for ns, link, addr in zip(spaces, links, addresses, strict=True):
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


def namespace_pids(ns: str) -> set[int]:
    """The processes living in a network namespace."""
    return {int(p) for p in ip("netns", "pids", ns).stdout.split()}
