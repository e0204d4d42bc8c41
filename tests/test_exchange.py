"""The exchange benchmark program: 4 worker processes on a ring for real, a few lock-step rounds; its
option checks and summary without processes."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import networkx as nx
import numpy as np
import pytest

from dsim import native, wire
from dsim.config import resolve
from dsim.errors import DsimError
from dsim.launch import launch
from dsim.nodes.exchange import KIND, summarize
from dsim.testing import run_program

NODES, ROUNDS, BYTES = 4, 5, 256


def _launch(out: Path, *sets: str) -> tuple[int, Path]:
    cfg = resolve(None, {"nodes": NODES, "topology": "ring", "algorithm": "exchange", "out": str(out)},
                  [f"rounds={ROUNDS}", "timeout=30", "net.start_timeout=30", *sets])
    return launch(cfg, quiet=True)


@pytest.mark.parametrize("io", ["auto", "off"])
def test_exchange_counts_every_byte_and_reports_throughput(tmp_path: Path, io: str) -> None:
    code, run_dir = _launch(tmp_path / "run", f"exchange.bytes={BYTES}", f"net.native_io={io}")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert code == 0, summary["failures"]
    # "auto" takes dsim's compiled calls wherever they were built, as here unless no compiler was
    starts = [json.loads(line) for rank in range(NODES) for line in open(run_dir / "nodes" / f"{rank}.jsonl")
              if '"start"' in line]
    built = native.load()[0] is not None
    assert {s["io"] for s in starts} == {"native" if io == "auto" and built else "pyzmq"}

    run_id = summary["run_id"]
    payload = np.zeros(BYTES // 4, dtype=np.float32)
    rows = {int(r["rank"]): r for r in csv.DictReader(open(run_dir / "bandwidth.csv"))}
    assert sorted(rows) == list(range(NODES))
    for rank, row in rows.items():
        neighbours = [(rank - 1) % NODES, (rank + 1) % NODES]
        expected = sum(
            wire.frames_size(wire.encode(run_id, rank, n, "hello", None))
            + ROUNDS * wire.frames_size(wire.encode(run_id, rank, n, KIND, payload))
            for n in neighbours
        )
        assert int(row["bytes_sent"]) == expected
        assert int(row["msgs_sent"]) == 2 * (ROUNDS + 1)  # hello + one per round, to each neighbour
    for key in ("bytes", "msgs"):
        assert sum(int(r[f"{key}_sent"]) for r in rows.values()) == sum(int(r[f"{key}_recv"]) for r in rows.values())

    results = summary["results"]
    assert results["msgs"] == NODES * 2 * ROUNDS
    assert results["bytes"] == NODES * 2 * ROUNDS * BYTES
    for node in results["per_node"].values():
        assert node["msgs"] == 2 * ROUNDS and node["seconds"] > 0
    assert results["msgs_per_s"] == results["msgs"] / results["seconds"]
    assert results["seconds"] == max(n["seconds"] for n in results["per_node"].values())


def test_exchange_refuses_a_size_that_is_not_whole_floats_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(DsimError, match=r"config key 'exchange.bytes' expects int that's a multiple of 4, got 1022"):
        run_program("exchange", sets=["exchange.bytes=1022"], run_dir=tmp_path)
    assert not (tmp_path / "nodes").exists()  # refused while resolving: no node was built


def test_summarize_divides_all_messages_by_the_slowest_node() -> None:
    results = {0: {"msgs": 10, "bytes": 10_000, "seconds": 2.0}, 1: {"msgs": 30, "bytes": 30_000, "seconds": 4.0}}
    out = summarize(results, nx.path_graph(2))
    assert out["msgs"] == 40 and out["seconds"] == 4.0
    assert out["msgs_per_s"] == 10.0 and out["mb_per_s"] == 0.01
    assert math.isnan(summarize({0: {}}, nx.path_graph(1))["msgs_per_s"])
