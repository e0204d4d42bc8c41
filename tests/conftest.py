"""Shared helpers: the real `dsim` console script, run directories, and the ../shared data folder."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
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
