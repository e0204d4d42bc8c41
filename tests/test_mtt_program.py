"""The MTT distill-and-share program (and its base mode) on the bundled digits dataset (tiny settings).

The program's logic runs in the in-process harness (dsim.testing); one real launch through the `dsim`
console script checks that separate processes count what the harness counts and keep what it keeps.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import node_events, read_csv, run_dsim, summary
from dsim.data import node_data
from dsim.ml.dm import init_from_real
from dsim.ml.dsa import derive_seed
from dsim.testing import HarnessResult, run_program

TINY = ["mtt.experts=2", "mtt.expert_train_epochs=3", "mtt.iterations=6", "mtt.syn_steps=4", "mtt.eval_every=3",
        "mtt.client_eval_epochs=4", "mtt.search_epochs=4", "mtt.eval_epochs=6", "mtt.eval_models=2",
        "mtt.width=32", "mtt.lr_img=100", "mtt.progress_every=2", "mtt.grid_sgd=[0.01, 0.03]",
        "mtt.grid_adam=[0.001]"]
DISTILLED = ["mtt.ipc=2", "mtt.store_experts_mb=0", "mtt.keep_experts=true"]
COUNTERS = ("bytes_sent", "bytes_recv", "msgs_sent", "msgs_recv", "bytes_relayed")
CLIENTS = ("1", "2", "3")


def harness(*sets: str, **kwargs) -> HarnessResult:
    return run_program("mtt", nodes=3, topology="star", flags={"data": {"dataset": "digits"}},
                       sets=[*TINY, *sets], **kwargs)


@pytest.fixture(scope="module")
def distilled(tmp_path_factory) -> HarnessResult:
    return harness(*DISTILLED, run_dir=tmp_path_factory.mktemp("mtt") / "run")


def test_mtt_reports_progress_per_client_figures_and_a_global_score(distilled: HarnessResult) -> None:
    run, res = distilled, distilled.summary
    assert res["mode"] == "distilled" and res["clients_answered"] == 3 and res["clients_missing"] == []
    assert res["synthetic_images"] == 3 * 10 * 2  # every digits client holds all 10 classes (IID)
    assert 0.15 < res["accuracy_mean"] <= 1.0  # chance is 0.1
    assert len(res["accuracies"]) == 2 and res["optimizer"] in ("sgd", "adam")
    assert len(res["search"]) == 3 and res["select_on"] == "synthetic"
    server_progress = 0
    for rank in CLIENTS:
        client, per_node, kinds = res["clients"][rank], run.results[int(rank)], run.traffic[int(rank)]["by_kind"]
        assert 0.0 <= client["base_val"] <= 1.0 and 0.0 <= client["distilled_val"] <= 1.0
        assert client["distilled_val"] >= client["base_val"]  # the best set, scored from iteration 0 on
        # experts: 2 messages; iterations 2, 3 (scored), 4, 6 (scored, last): 4 messages
        assert per_node["progress_messages"] == 6
        assert kinds["set"]["msgs_sent"] == 1
        assert kinds["set"]["bytes_sent"] == client["set_bytes"] == res["bytes_per_client"][rank]
        pixels_and_labels = 20 * (8 * 8 * 4 + 8)
        assert pixels_and_labels < client["set_bytes"] < pixels_and_labels + 400
        assert kinds["progress"]["bytes_sent"] == client["progress_bytes"]
        server_progress += per_node["progress_messages"]
    assert run.traffic[0]["by_kind"]["progress"]["msgs_recv"] == server_progress
    logged = [e for e in run.events(0) if "client" in e]
    assert len(logged) == server_progress  # the server logged every progress message
    assert any("val_accuracy" in e for e in logged)
    for rank in CLIENTS:  # store_experts_mb=0: every buffer went to disk, kept as asked
        assert run.results[int(rank)]["experts_on_disk"]
        experts = run.run_dir / "experts" / rank
        assert sorted(p.name for p in experts.iterdir()) == ["expert_0000.npy", "expert_0001.npy"]
    saved = np.load(run.run_dir / "synthetic.npz")
    assert saved["images"].shape == (60, 1, 8, 8) and sorted(set(saved["client"].tolist())) == [1, 2, 3]


def test_base_mode_sends_the_initial_real_images_and_test_split_selection_is_disjoint() -> None:
    run = harness('mtt.mode="base"', 'mtt.select_on="test_split"', "mtt.select_size=100")
    res = run.summary
    assert res["mode"] == "base" and res["synthetic_images"] == 30
    assert res["selection_images"] == 100 and res["test_images"] == 359 - 100
    for rank in CLIENTS:
        client = res["clients"][rank]
        assert client["distilled_val"] is None and 0.0 <= client["base_val"] <= 1.0
        assert client["progress_bytes"] == 0 and "progress" not in run.traffic[int(rank)]["by_kind"]
    # The base set is exactly what distillation would start from on each client.
    saved = np.load(run.run_dir / "synthetic.npz")
    for rank in (1, 2, 3):
        nd = node_data({"dataset": "digits"}, num_parts=3, part=rank - 1, seed=0)
        x, _ = init_from_real(nd.train_x, nd.train_y, 1, derive_seed(derive_seed(0, rank), -2))
        torch.testing.assert_close(torch.from_numpy(saved["images"][saved["client"] == rank]), x)


def test_a_real_launch_counts_what_the_harness_counts(tmp_path, distilled: HarnessResult) -> None:
    out = tmp_path / "run"
    res = run_dsim("launch", "--algorithm", "mtt", "--dataset", "digits", "--nodes", "3", "--topology", "star",
                   "--nodes-per-process", "2", "--out", str(out), "--quiet",
                   *[a for s in [*TINY, *DISTILLED] for a in ("--set", s)], timeout=300)
    assert res.returncode == 0, res.stderr
    s = summary(out)
    assert s["status"] == "ok" and s["results"]["clients_answered"] == 3
    real = {int(r["rank"]): {c: int(r[c]) for c in COUNTERS} for r in read_csv(out / "bandwidth.csv")}
    assert real == {rank: {c: t[c] for c in COUNTERS} for rank, t in distilled.traffic.items()}
    assert len([e for e in node_events(out, 0) if e["event"] == "metric" and "client" in e]) == 3 * 6
    for rank in CLIENTS:
        assert sorted(p.name for p in (out / "experts" / rank).iterdir()) == ["expert_0000.npy", "expert_0001.npy"]
    assert np.load(out / "synthetic.npz")["images"].shape == (60, 1, 8, 8)
