"""FedAvg and D-PSGD on the bundled digits dataset (small settings).

The programs' logic runs in the in-process harness (dsim.testing); one real launch per program, through
the `dsim` console script, checks that separate processes count what the harness counts.
"""

from __future__ import annotations

import pytest
import torch

from conftest import node_events, read_csv, run_dsim, summary
from dsim.ml.models import build_model
from dsim.nodes.fedavg import FedAvgOptions, local_train, weighted_average
from dsim.testing import HarnessResult, run_program

COUNTERS = ("bytes_sent", "bytes_recv", "msgs_sent", "msgs_recv", "bytes_relayed")


def small(algorithm: str, *sets: str) -> list[str]:
    return ["rounds=3", f"{algorithm}.width=32", f"{algorithm}.lr=0.05", *sets]


def harness(algorithm: str, nodes: int, topology: str, *sets: str, **kwargs) -> HarnessResult:
    return run_program(algorithm, nodes=nodes, topology=topology, flags={"data": {"dataset": "digits"}},
                       sets=small(algorithm, *sets), **kwargs)


def moved(traffic: dict) -> int:
    return traffic["bytes_sent"] + traffic["bytes_recv"]


def test_fedavg_client_bytes_are_rounds_times_two_models_and_it_learns() -> None:
    run = harness("fedavg", 3, "star", "fedavg.local_epochs=2")
    res = run.summary
    assert res["rounds"] == 3 and len(res["history"]) == 3
    assert all(h["clients"] == 3 for h in res["history"])
    times = [h["t"] for h in res["history"]]  # seconds since launch: accuracy against time
    assert times == sorted(times) and times[0] > 0
    assert res["accuracy"] > 0.3  # chance is 0.1
    expected = 3 * 2 * res["model_bytes"]
    for rank in (1, 2, 3):
        assert abs(moved(run.traffic[rank]) - expected) / expected < 0.02, (run.traffic[rank], expected)
        assert res["bytes_per_client"][str(rank)] <= moved(run.traffic[rank])  # its own count leaves out hellos
    per_round = run.events(0)
    assert [e["round"] for e in per_round] == [0, 1, 2] and all("accuracy" in e for e in per_round)


def test_fedavg_partial_participation_draws_that_many_clients_per_round() -> None:
    run = harness("fedavg", 4, "star", "fedavg.participation=0.5", "fedavg.local_steps=2")
    res = run.summary
    assert all(h["clients"] == 2 for h in res["history"])
    trained = {r: run.results[r]["rounds_trained"] for r in (1, 2, 3, 4)}
    assert sum(trained.values()) == 3 * 2
    for rank, rounds in trained.items():
        expected = rounds * 2 * res["model_bytes"]
        assert abs(moved(run.traffic[rank]) - expected) <= 0.02 * res["model_bytes"] + 600, (rank, expected)


def test_dpsgd_on_a_ring_learns_and_only_talks_to_neighbours() -> None:
    rounds = 4
    run = harness("dpsgd", 8, "ring", f"rounds={rounds}")
    res = run.summary
    assert len(res["accuracy_per_node"]) == 8
    assert res["accuracy_mean"] > 0.4 and res["accuracy_min"] > 0.2  # chance is 0.1
    model = res["model_bytes"]
    for rank, traffic in run.traffic.items():
        assert traffic["bytes_relayed"] == 0 and set(traffic["by_kind"]) == {"hello", "dpsgd"}
        degree = run.results[rank]["degree"]
        assert degree == 2
        gossip = traffic["by_kind"]["dpsgd"]
        assert gossip["msgs_sent"] == gossip["msgs_recv"] == rounds * degree
        assert abs(gossip["bytes_sent"] - rounds * degree * model) / (rounds * degree * model) < 0.02


@pytest.mark.parametrize("algorithm, nodes, topology", [("fedavg", 3, "star"), ("dpsgd", 4, "ring")])
def test_a_real_launch_counts_what_the_harness_counts(tmp_path, algorithm, nodes, topology) -> None:
    out = tmp_path / "run"
    res = run_dsim("launch", "--algorithm", algorithm, "--nodes", str(nodes), "--topology", topology,
                   "--dataset", "digits", "--nodes-per-process", "2", "--quiet", "--out", str(out),
                   *[a for s in small(algorithm) for a in ("--set", s)], timeout=300)
    assert res.returncode == 0, res.stderr
    assert summary(out)["status"] == "ok"
    assert [e["round"] for e in node_events(out, 0) if e["event"] == "metric"] == [0, 1, 2]
    run = harness(algorithm, nodes, topology, run_dir=tmp_path / "harness")
    real = {int(r["rank"]): {c: int(r[c]) for c in COUNTERS} for r in read_csv(out / "bandwidth.csv")}
    assert real == {rank: {c: t[c] for c in COUNTERS} for rank, t in run.traffic.items()}


def test_weighted_average_weights_by_samples() -> None:
    avg = weighted_average([torch.ones(4), torch.full((4,), 3.0)], [1, 3])
    torch.testing.assert_close(avg, torch.full((4,), 2.5))
    assert avg.dtype == torch.float32


def test_local_steps_take_exactly_that_many_minibatches() -> None:
    model = build_model({"name": "convnet", "width": 8}, 1, 10, 8, seed=0)
    calls: list[int] = []
    model.register_forward_hook(lambda mod, inp, out: calls.append(len(inp[0])))
    x, y = torch.randn(50, 1, 8, 8), torch.randint(0, 10, (50,))
    local_train(model, x, y, FedAvgOptions(local_steps=7, batch=16), "digits", seed=1)
    assert calls == [16] * 7  # 7 full batches, the 50 samples cycled
