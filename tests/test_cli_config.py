"""The command line refuses bad configuration before anything starts, and shows what can be set."""

from __future__ import annotations

import tomllib

import pytest

from conftest import run_dsim

CLI_BAD_VALUES = [
    ("mtt", "mtt.mode=foo", "mtt.mode"),
    ("fedavg", "fedavg.participation=0", "fedavg.participation"),
    ("collabdm", "dm.lr=-1", "dm.lr"),
    ("gossip", "gossip.dim=0", "gossip.dim"),
    ("collabdm", "data.beta=0", "data.beta"),
    ("localdm", "dm.nope=3", "dm.nope"),
    ("dpsgd", "dpsgd.local_epochs=0", "[dpsgd]"),
    ("mtt", "mtt.ipc=0", "mtt.ipc"),
    ("exchange", "exchange.bytes=1023", "exchange.bytes"),
    ("gossip", "net.heartbeat=100", "[net]"),
]


@pytest.mark.parametrize("algorithm, assignment, key", CLI_BAD_VALUES)
def test_launch_refuses_a_bad_value_before_any_worker_starts(tmp_path, algorithm: str, assignment: str,
                                                             key: str) -> None:
    proc = run_dsim("launch", "--nodes", "3", "--topology", "ring", "--algorithm", algorithm, "--set", assignment,
                    "--quiet", cwd=tmp_path, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dsim: error: ") and key in lines[0], proc.stderr
    assert not (tmp_path / "runs").exists()  # nothing was written: no run directory, so no worker ran


def test_config_prints_every_key_with_its_doc_and_reads_back(tmp_path) -> None:
    proc = run_dsim("config", "--algorithm", "collabdm", "--set", "dm.ipc=50", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    parsed = tomllib.loads(text)
    assert parsed["algorithm"] == "collabdm" and parsed["dm"]["ipc"] == 50 and "partition" in parsed["data"]
    assert "# images per class of the global set" in text
    (tmp_path / "c.toml").write_text(text)
    again = run_dsim("config", "--config", str(tmp_path / "c.toml"), cwd=tmp_path)
    assert again.returncode == 0 and again.stdout == text


def test_dry_run_prints_the_plan_and_starts_nothing(tmp_path) -> None:
    proc = run_dsim("launch", "--nodes", "4", "--topology", "ring", "--algorithm", "fedavg",
                    "--nodes-per-process", "2", "--partition", "dirichlet", "--beta", "0.3", "--dry-run",
                    cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "graph: ring, 5 nodes, 5 edges, server = rank 0" in out
    assert "process w0.0: nodes 0-1" in out and "process w0.2: node 4" in out
    assert "partition dirichlet into 4 parts" in out and "rank 0: no train data" in out
    assert not (tmp_path / "runs").exists()
