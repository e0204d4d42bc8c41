"""The MTT distill-and-share program (and its base mode) end to end on the bundled digits dataset."""

from __future__ import annotations

import csv

import numpy as np
import torch

from conftest import node_events, run_dsim, summary
from dsim.data import node_data
from dsim.ml.dm import init_from_real
from dsim.ml.dsa import derive_seed

TINY = ["--set", "mtt.experts=2", "--set", "mtt.expert_train_epochs=3", "--set", "mtt.iterations=6",
        "--set", "mtt.syn_steps=4", "--set", "mtt.eval_every=3", "--set", "mtt.client_eval_epochs=4",
        "--set", "mtt.search_epochs=4", "--set", "mtt.eval_epochs=6", "--set", "mtt.eval_models=2",
        "--set", "mtt.width=32", "--set", "mtt.lr_img=100", "--set", "mtt.progress_every=2",
        "--set", "mtt.grid_sgd=[0.01, 0.03]", "--set", "mtt.grid_adam=[0.001]"]


def launch(out, *args: str) -> dict:
    res = run_dsim("launch", "--algorithm", "mtt", "--dataset", "digits", "--nodes", "3", "--topology", "star",
                   "--nodes-per-process", "2", "--out", str(out), "--quiet", *TINY, *args, timeout=300)
    assert res.returncode == 0, res.stderr
    return summary(out)


def by_kind(run_dir) -> dict[tuple[str, str], dict]:
    with open(run_dir / "bandwidth_by_kind.csv") as fh:
        return {(r["rank"], r["kind"]): r for r in csv.DictReader(fh)}


def test_mtt_runs_end_to_end_with_progress_per_client_figures_and_a_global_score(tmp_path) -> None:
    run = tmp_path / "run"
    res = launch(run, "--set", "mtt.ipc=2", "--set", "mtt.store_experts_mb=0", "--set", "mtt.keep_experts=true",
                 )["results"]
    assert res["mode"] == "distilled" and res["clients_answered"] == 3 and res["clients_missing"] == []
    assert res["synthetic_images"] == 3 * 10 * 2  # every digits client holds all 10 classes (IID)
    assert 0.15 < res["accuracy_mean"] <= 1.0  # chance is 0.1
    assert len(res["accuracies"]) == 2 and res["optimizer"] in ("sgd", "adam")
    assert len(res["search"]) == 3 and res["select_on"] == "synthetic"
    kinds = by_kind(run)
    server_progress = 0
    for rank in ("1", "2", "3"):
        client = res["clients"][rank]
        assert 0.0 <= client["base_val"] <= 1.0 and 0.0 <= client["distilled_val"] <= 1.0
        assert client["distilled_val"] >= client["base_val"]  # the best set, scored from iteration 0 on
        per_node = res["per_node"][rank]
        # experts: 2 messages; iterations 2, 3 (scored), 4, 6 (scored, last): 4 messages
        assert per_node["progress_messages"] == 6
        assert int(kinds[(rank, "set")]["msgs_sent"]) == 1
        assert int(kinds[(rank, "set")]["bytes_sent"]) == client["set_bytes"] == res["bytes_per_client"][rank]
        pixels_and_labels = 20 * (8 * 8 * 4 + 8)
        assert pixels_and_labels < client["set_bytes"] < pixels_and_labels + 400
        assert int(kinds[(rank, "progress")]["bytes_sent"]) == client["progress_bytes"]
        server_progress += per_node["progress_messages"]
    assert int(kinds[("0", "progress")]["msgs_recv"]) == server_progress
    logged = [e for e in node_events(run, 0) if e.get("event") == "metric" and "client" in e]
    assert len(logged) == server_progress  # the server logged every progress message
    assert any("val_accuracy" in e for e in logged)
    for rank in ("1", "2", "3"):  # store_experts_mb=0: every buffer went to disk, kept as asked
        assert res["per_node"][rank]["experts_on_disk"]
        assert sorted(p.name for p in (run / "experts" / rank).iterdir()) == ["expert_0000.npy", "expert_0001.npy"]
    saved = np.load(run / "synthetic.npz")
    assert saved["images"].shape == (60, 1, 8, 8) and sorted(set(saved["client"].tolist())) == [1, 2, 3]


def test_base_mode_sends_the_initial_real_images_and_test_split_selection_is_disjoint(tmp_path) -> None:
    run = tmp_path / "run"
    res = launch(run, "--set", "mtt.mode=\"base\"", "--set", "mtt.select_on=\"test_split\"",
                 "--set", "mtt.select_size=100")["results"]
    assert res["mode"] == "base" and res["synthetic_images"] == 30
    assert res["selection_images"] == 100 and res["test_images"] == 359 - 100
    kinds = by_kind(run)
    for rank in ("1", "2", "3"):
        client = res["clients"][rank]
        assert client["distilled_val"] is None and 0.0 <= client["base_val"] <= 1.0
        assert client["progress_bytes"] == 0 and (rank, "progress") not in kinds
    # The base set is exactly what distillation would start from on each client.
    saved = np.load(run / "synthetic.npz")
    data_cfg = {"dataset": "digits"}
    for rank in (1, 2, 3):
        nd = node_data(data_cfg, num_parts=3, part=rank - 1, seed=0)
        x, _ = init_from_real(nd.train_x, nd.train_y, 1, derive_seed(derive_seed(0, rank), -2))
        torch.testing.assert_close(torch.from_numpy(saved["images"][saved["client"] == rank]), x)
