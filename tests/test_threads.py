"""torch's thread pool is per process: a node may widen it only when it has its process to itself."""

from __future__ import annotations

import json
import os
import subprocess

import torch

from conftest import REPO, dsim_script
from dsim.testing import run_program


def test_packed_nodes_leave_the_process_threads_alone() -> None:
    torch.set_num_threads(1)
    try:
        run = run_program("testprogs.cores", nodes=3, topology="ring")
    finally:
        torch.set_num_threads(os.cpu_count() or 1)
    assert all(r == {"before": 1, "after": 1} for r in run.results.values()), run.results


def test_a_node_alone_in_its_process_gets_every_core(tmp_path) -> None:
    out = tmp_path / "run"
    proc = subprocess.run([dsim_script(), "launch", "--nodes", "2", "--topology", "ring", "--algorithm",
                           "testprogs.cores", "--out", str(out), "--quiet"], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(REPO / "tests")})
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "summary.json").read_text())["results"]["per_node"]
    assert {r["after"] for r in results.values()} == {os.cpu_count()}, results
