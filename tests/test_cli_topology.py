"""`dsim topology`: in-process through click for output, and as the real console script for exit codes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import matplotlib.image
import pytest
from click.testing import CliRunner

from conftest import dsim_script
from dsim.commands.topology import topology
from dsim.errors import DsimError
from dsim.topologies import build, graph_hash, read_edges


def invoke(*args: str):
    return CliRunner().invoke(topology, list(args), catch_exceptions=True)


def test_readable_summary() -> None:
    result = invoke("ring", "--nodes", "10", "--server")
    assert result.exit_code == 0, result.output
    lines = dict(line.split(None, 1) for line in result.output.splitlines() if not line.startswith("spectral"))
    assert lines["topology"] == "ring"
    assert lines["nodes"] == "11 (10 workers, server = rank 0)"
    assert lines["edges"] == "11"
    assert lines["degree"] == "min 2, mean 2.00, max 2"
    assert lines["diameter"] == "5"
    assert lines["sha256"] == graph_hash(build("ring", 10, with_server=True))


def test_json_summary_and_params_reach_the_builder() -> None:
    result = invoke("regular", "--nodes", "12", "--degree", "5", "--seed", "3", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["nodes"] == 12 and info["server"] is None
    assert info["degree"] == {"min": 5, "mean": 5.0, "max": 5}
    assert info["params"] == {"degree": 5}
    assert info["hash"] == graph_hash(build("regular", 12, seed=3, params={"degree": 5}))


def test_grid_rows_and_small_world_options() -> None:
    grid = json.loads(invoke("grid", "--nodes", "12", "--rows", "2", "--json").output)
    assert grid["params"] == {"rows": 2, "cols": 6}
    sw = json.loads(invoke("small-world", "--nodes", "20", "--k", "6", "--rewire", "0", "--json").output)
    assert sw["degree"] == {"min": 6, "mean": 6.0, "max": 6}
    er = json.loads(invoke("erdos-renyi", "--nodes", "10", "--p", "1", "--json").output)
    assert er["edges"] == 45


def test_save_and_draw(tmp_path: Path) -> None:
    edges, png = tmp_path / "t.edges", tmp_path / "t.png"
    result = invoke("torus", "--nodes", "16", "--save", str(edges), "--draw", str(png))
    assert result.exit_code == 0, result.output
    assert f"saved edges to {edges}" in result.output and f"drew {png}" in result.output
    assert graph_hash(read_edges(edges)) == graph_hash(build("torus", 16))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.image.imread(png).ndim == 3


def test_file_input_the_file_wins(tmp_path: Path) -> None:
    path = tmp_path / "path.edges"
    path.write_text("4\n0 1\n1 2\n2 3\n")
    result = CliRunner().invoke(topology, [str(path), "--nodes", "9", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["nodes"] == 4 and info["source"] == str(path) and info["diameter"] == 3
    assert "the file has 4 nodes; --nodes 9 ignored" in result.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["ring"], "--nodes is required"),
        (["rnig", "--nodes", "4"], "choose one of star, ring"),
        (["regular", "--nodes", "7", "--degree", "3"], "nodes * degree even"),
    ],
)
def test_bad_input_raises_dsim_error(args: list[str], needle: str) -> None:
    result = invoke(*args)
    assert isinstance(result.exception, DsimError)
    assert needle in str(result.exception)


def test_console_script_bad_input_exits_2_with_one_line() -> None:
    proc = subprocess.run(
        [dsim_script(), "topology", "torus", "--nodes", "7"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "torus with 7 nodes has no shape" in lines[0]


def test_console_script_json(tmp_path: Path) -> None:
    proc = subprocess.run(
        [dsim_script(), "topology", "star", "--nodes", "5", "--json"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["nodes"] == 6 and info["server"] == 0 and info["degree"]["max"] == 5
