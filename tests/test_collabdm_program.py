"""base / LocalDM / CollabDM as real node programs on the bundled digits dataset (small settings)."""

from __future__ import annotations

import csv
import os

import numpy as np

from conftest import REPO, run_dsim, summary
from dsim.ml.models import embedding_dim

SMALL = ["--set", "dm.iterations=10", "--set", "dm.seeds=6", "--set", "dm.eval_epochs=5",
         "--set", "dm.eval_models=2", "--set", "dm.batch_real=32", "--set", "dm.mean_batch=32",
         "--set", "dm.ipc=6"]


def launch(out, *args, env=None):
    res = run_dsim("launch", "--nodes", "3", "--topology", "star", "--out", str(out), *SMALL, *args,
                   timeout=300) if env is None else _run_env(out, env, *args)
    assert res.returncode == 0, res.stderr
    return summary(out)


def _run_env(out, env, *args):
    import subprocess

    from conftest import dsim_script
    return subprocess.run([dsim_script(), "launch", "--nodes", "3", "--topology", "star", "--out", str(out),
                           *SMALL, *args], capture_output=True, text=True, timeout=300, env=env)


def test_collabdm_client_bytes_match_the_analytic_payload(tmp_path) -> None:
    s = launch(tmp_path / "run", "--algorithm", "collabdm")
    results = s["results"]
    assert results["synthetic_images"] == 3 * 10 * (6 // 3 + 1)  # clients x classes x local ipc
    assert 0.2 < results["accuracy_mean"] <= 1.0  # chance is 0.1; 5 epochs only and results["num_eval_models"] == 2
    d = embedding_dim("convnet", 8)
    with open(tmp_path / "run" / "bandwidth_by_kind.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["kind"] == "set" and r["role"] == "client"]
    assert len(rows) == 3
    for row in rows:
        per = s["results"]["per_node"][row["rank"]]
        images = per["images"]
        analytic = per["seeds"] * 10 * d * 4 + images * 1 * 8 * 8 * 4 + images * 8 + 10 * 8
        assert abs(int(row["bytes_sent"]) - analytic) / analytic < 0.02, (row, analytic)
    seeds_total = sum(s["results"]["per_node"][str(k)]["seeds"] for k in (1, 2, 3))
    assert seeds_total == 6 * 3  # participation 1.0: every client gets every seed


def test_fixed_seed_gives_the_same_synthetic_set_and_accuracies(tmp_path) -> None:
    a = launch(tmp_path / "a", "--algorithm", "localdm", "--seed", "5")
    b = launch(tmp_path / "b", "--algorithm", "localdm", "--seed", "5")
    assert a["results"]["accuracies"] == b["results"]["accuracies"]
    sa, sb = np.load(tmp_path / "a" / "synthetic.npz"), np.load(tmp_path / "b" / "synthetic.npz")
    np.testing.assert_array_equal(sa["images"], sb["images"])
    np.testing.assert_array_equal(sa["labels"], sb["labels"])


def test_a_silent_client_is_dropped_and_recorded(tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests")}
    s = launch(tmp_path / "run", "--algorithm", "testprogs.silent_client", "--set", "dm.client_timeout=5",
               env=env)
    assert s["status"] == "ok"
    assert s["results"]["clients_missing"] == [2] and s["results"]["clients_answered"] == 2


def test_base_sends_real_images_and_no_means(tmp_path) -> None:
    s = launch(tmp_path / "run", "--algorithm", "base")
    assert s["results"]["synthetic_images"] == 90
    per_client_images = 30 * (8 * 8 * 4 + 8)  # 10 classes x 3 images, pixels + int64 labels
    assert all(per_client_images < v < per_client_images + 400 for v in s["results"]["bytes_per_client"].values())


def test_all_nodes_packed_in_one_process(tmp_path) -> None:
    """One worker process (torch already used by the launcher before the fork) must not deadlock."""
    s = launch(tmp_path / "run", "--algorithm", "base", "--nodes-per-process", "4")
    assert s["status"] == "ok" and s["results"]["clients_answered"] == 3
