"""FedAvg and D-PSGD as real node programs on the bundled digits dataset (small settings)."""

from __future__ import annotations

import csv

import torch

from conftest import node_events, run_dsim, summary
from dsim.ml.models import build_model
from dsim.nodes.fedavg import DEFAULTS, local_train, weighted_average

SMALL = ["--dataset", "digits", "--set", "rounds=3"]


def launch(out, algorithm: str, *args: str, per_process: int = 2) -> dict:
    """Several nodes per process: far fewer interpreters (and torch imports) on a small machine."""
    table = algorithm
    res = run_dsim("launch", "--algorithm", algorithm, "--out", str(out), "--quiet", *SMALL,
                   "--nodes-per-process", str(per_process), "--set", f"{table}.width=32",
                   "--set", f"{table}.lr=0.05", *args, timeout=300)
    assert res.returncode == 0, res.stderr
    return summary(out)


def rows(path) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_fedavg_client_bytes_are_rounds_times_two_models_and_it_learns(tmp_path) -> None:
    s = launch(tmp_path / "run", "fedavg", "--nodes", "3", "--topology", "star",
               "--set", "fedavg.local_epochs=2")
    res = s["results"]
    assert res["rounds"] == 3 and len(res["history"]) == 3
    assert all(h["clients"] == 3 for h in res["history"])
    assert res["accuracy"] > 0.3  # chance is 0.1
    expected = 3 * 2 * res["model_bytes"]
    clients = [r for r in rows(tmp_path / "run" / "bandwidth.csv") if r["role"] == "client"]
    assert len(clients) == 3
    for row in clients:
        moved = int(row["bytes_sent"]) + int(row["bytes_recv"])
        assert abs(moved - expected) / expected < 0.02, (row, expected)
        assert res["bytes_per_client"][row["rank"]] <= moved  # its own count leaves out the hellos
    per_round = [e for e in node_events(tmp_path / "run", 0) if e.get("event") == "metric"]
    assert [e["round"] for e in per_round] == [0, 1, 2] and all("accuracy" in e for e in per_round)


def test_fedavg_partial_participation_draws_that_many_clients_per_round(tmp_path) -> None:
    s = launch(tmp_path / "run", "fedavg", "--nodes", "4", "--topology", "star",
               "--set", "fedavg.participation=0.5", "--set", "fedavg.local_steps=2")
    res = s["results"]
    assert all(h["clients"] == 2 for h in res["history"])
    trained = {r: s["results"]["per_node"][r]["rounds_trained"] for r in ("1", "2", "3", "4")}
    assert sum(trained.values()) == 3 * 2
    for row in rows(tmp_path / "run" / "bandwidth.csv"):
        if row["role"] == "client":
            moved = int(row["bytes_sent"]) + int(row["bytes_recv"])
            expected = trained[row["rank"]] * 2 * res["model_bytes"]
            assert abs(moved - expected) <= 0.02 * res["model_bytes"] + 600, (row, expected)


def test_dpsgd_on_a_ring_learns_and_only_talks_to_neighbours(tmp_path) -> None:
    rounds = 4
    s = launch(tmp_path / "run", "dpsgd", "--nodes", "8", "--topology", "ring",
               "--set", f"rounds={rounds}", per_process=4)
    res = s["results"]
    assert len(res["accuracy_per_node"]) == 8
    assert res["accuracy_mean"] > 0.4 and res["accuracy_min"] > 0.2  # chance is 0.1
    assert all(int(r["bytes_relayed"]) == 0 for r in rows(tmp_path / "run" / "bandwidth.csv"))
    by_kind = rows(tmp_path / "run" / "bandwidth_by_kind.csv")
    assert {r["kind"] for r in by_kind} <= {"hello", "dpsgd"}
    gossip = [r for r in by_kind if r["kind"] == "dpsgd"]
    assert len(gossip) == 8
    for row in gossip:
        degree = res["per_node"][row["rank"]]["degree"]
        assert degree == 2
        assert int(row["msgs_sent"]) == int(row["msgs_recv"]) == rounds * degree
        model = res["model_bytes"]
        assert abs(int(row["bytes_sent"]) - rounds * degree * model) / (rounds * degree * model) < 0.02


def test_weighted_average_weights_by_samples() -> None:
    avg = weighted_average([torch.ones(4), torch.full((4,), 3.0)], [1, 3])
    torch.testing.assert_close(avg, torch.full((4,), 2.5))
    assert avg.dtype == torch.float32


def test_local_steps_take_exactly_that_many_minibatches() -> None:
    model = build_model({"name": "convnet", "width": 8}, 1, 10, 8, seed=0)
    calls: list[int] = []
    model.register_forward_hook(lambda mod, inp, out: calls.append(len(inp[0])))
    x, y = torch.randn(50, 1, 8, 8), torch.randint(0, 10, (50,))
    local_train(model, x, y, {**DEFAULTS, "local_steps": 7, "batch": 16}, "digits", seed=1)
    assert calls == [16] * 7  # 7 full batches, the 50 samples cycled
