"""`dsim partition`: table, JSON and plot output, in-process and through the console script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from dsim.commands.partition import partition
from dsim.data.datasets import MNIST_FILES
from dsim.errors import DsimError

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MNIST_DIR = SHARED / "data" / "mnist"
needs_mnist = pytest.mark.skipif(
    not all((MNIST_DIR / f).is_file() for f in MNIST_FILES),
    reason=f"real MNIST files not present in {MNIST_DIR} (only on the development machine)",
)
DSIM = Path(sys.executable).parent / "dsim"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(DSIM), *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def console_script() -> None:
    """The installed `dsim` script runs `partition` (a broken install fails here, it is not skipped)."""
    probe = _run("partition", "--help")
    assert probe.returncode == 0, probe.stderr
    assert "--shards" in probe.stdout and "kshard" in probe.stdout


def test_json_counts_sum_to_the_train_set() -> None:
    result = CliRunner().invoke(partition, ["--dataset", "synthetic", "--partition", "dirichlet",
                                            "--beta", "0.3", "--nodes", "6", "--json"])
    assert result.exit_code == 0, result.output
    counts = json.loads(result.output)
    assert len(counts) == 6 and all(len(row) == 10 for row in counts)
    assert sum(map(sum, counts)) == 2000


def test_table_has_rows_columns_and_totals(tmp_path: Path) -> None:
    plot = tmp_path / "plots" / "parts.png"
    result = CliRunner().invoke(partition, ["--dataset", "digits", "--partition", "shard", "--shards", "2",
                                            "--nodes", "4", "--seed", "3", "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("# digits: shard(2 per node) over 4 nodes, seed 3;")
    assert lines[1].split() == ["node", *map(str, range(10)), "total"]
    rows = [list(map(int, line.split()[1:])) for line in lines[2:6]]
    assert all(sum(row[:-1]) == row[-1] for row in rows)
    total = lines[6].split()
    assert total[0] == "total" and int(total[-1]) == sum(row[-1] for row in rows) == 1438 - 1438 % 8
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000


def test_kshard_json_gives_every_node_the_same_share() -> None:
    result = CliRunner().invoke(partition, ["--dataset", "digits", "--partition", "kshard", "--shards", "2",
                                            "--nodes", "10", "--json"])
    assert result.exit_code == 0, result.output
    counts = json.loads(result.output)
    assert len(counts) == 10 and [sum(row) for row in counts] == [1438 // 10 // 2 * 2] * 10
    table = CliRunner().invoke(partition, ["--dataset", "digits", "--partition", "kshard", "--shards", "5",
                                           "--nodes", "10"])
    assert table.exit_code == 0, table.output
    assert table.output.startswith("# digits: kshard(5 per node) over 10 nodes, seed 0; 1400 of 1438 ")


def test_flags_and_choices_come_from_the_registry() -> None:
    from dsim.data.partitioners import PARTITIONERS, partition_params

    help_text = CliRunner().invoke(partition, ["--help"], terminal_width=200).output
    for key, param in partition_params().items():
        assert f"--{key.replace('_', '-')}" in help_text and param.description in help_text
    assert f"[{'|'.join(PARTITIONERS)}]" in help_text
    floor = CliRunner().invoke(partition, ["--dataset", "synthetic", "--partition", "dirichlet", "--beta", "2",
                                           "--class-floor", "3", "--min-size", "0", "--nodes", "4"])
    assert floor.exit_code == 0, floor.output
    assert floor.output.startswith("# synthetic: dirichlet(beta=2, min_size=0, class_floor=3) over 4 nodes")
    bad = CliRunner().invoke(partition, ["--dataset", "synthetic", "--partition", "dirichlet", "--beta", "inf",
                                         "--nodes", "4"])
    assert isinstance(bad.exception, DsimError) and str(bad.exception) == \
        "data.beta: Expected a finite `float` > 0.0, got inf"
    assert CliRunner().invoke(partition, ["--partition", "kshards", "--nodes", "2"]).exit_code == 2


def test_bad_input_is_an_error() -> None:
    missing = CliRunner().invoke(partition, ["--dataset", "synthetic"])
    assert missing.exit_code == 2 and "--nodes" in missing.output
    no_dir = CliRunner().invoke(partition, ["--dataset", "mnist", "--nodes", "3"])
    assert isinstance(no_dir.exception, DsimError) and "--data-dir" in str(no_dir.exception)


@needs_mnist
def test_console_script_json_on_mnist(console_script: None) -> None:
    result = _run("partition", "--dataset", "mnist", "--data-dir", str(SHARED / "data"),
                  "--partition", "dirichlet", "--beta", "0.5", "--nodes", "20", "--seed", "1", "--json")
    assert result.returncode == 0, result.stderr
    counts = json.loads(result.stdout)
    assert len(counts) == 20 and sum(map(sum, counts)) == 60000


def test_console_script_table_and_error(console_script: None, tmp_path: Path) -> None:
    result = _run("partition", "--dataset", "synthetic", "--partition", "iid", "--nodes", "3")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].split()[-1] == "2000"
    bad = _run("partition", "--dataset", "mnist", "--data-dir", str(tmp_path), "--nodes", "3")
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and bad.stderr.startswith("dsim: error: mnist: file ")
