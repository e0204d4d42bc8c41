"""torch's thread pool is per process: a node may widen it only when it has its process to itself."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch

from conftest import REPO, dsim_script
from dsim.testing import run_program


def test_packed_nodes_leave_the_process_threads_alone() -> None:
    torch.set_num_threads(1)
    try:
        run = run_program("testprogs.cores", nodes=3, topology="ring")
    finally:
        torch.set_num_threads(os.cpu_count() or 1)
    assert all((r["before"], r["after"]) == (1, 1) for r in run.results.values()), run.results


def test_a_node_alone_in_its_process_gets_every_core(tmp_path) -> None:
    out = tmp_path / "run"
    proc = subprocess.run([dsim_script(), "launch", "--nodes", "2", "--topology", "ring", "--algorithm",
                           "testprogs.cores", "--out", str(out), "--quiet"], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(REPO / "tests")})
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "summary.json").read_text())["results"]["per_node"]
    assert {r["after"] for r in results.values()} == {os.cpu_count()}, results


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="SCHED_BATCH is Linux's")
@pytest.mark.parametrize(("scheduler", "policy"), [("batch", os.SCHED_BATCH), ("normal", os.SCHED_OTHER)])
def test_every_thread_of_a_node_process_runs_in_the_chosen_scheduling_class(tmp_path, scheduler, policy) -> None:
    out = tmp_path / "run"
    proc = subprocess.run([dsim_script(), "launch", "--nodes", "2", "--topology", "ring", "--algorithm",
                           "testprogs.cores", "--set", f"net.scheduler={scheduler}", "--out", str(out),
                           "--quiet"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO / "tests")})
    assert proc.returncode == 0, proc.stderr
    for result in json.loads((out / "summary.json").read_text())["results"]["per_node"].values():
        threads = result["policies"]
        assert any(name.startswith("ZMQbg/IO") for name in threads), threads  # started after the switch
        assert set(threads.values()) == {policy}, threads
