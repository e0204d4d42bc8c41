"""Device placement: nodes dealt over GPUs by local rank, refusals before launch, devices recorded."""

from __future__ import annotations

import json

import pytest

from conftest import run_dsim
from dsim.devices import assign_devices
from dsim.errors import DsimError


def test_nodes_are_dealt_over_the_gpus_by_local_rank() -> None:
    assert assign_devices("auto", "", range(5), 2) == ["cuda:0", "cuda:1", "cuda:0", "cuda:1", "cuda:0"]
    assert assign_devices("cuda", "0,2", [3, 4, 5], 4) == ["cuda:2", "cuda:0", "cuda:2"]
    assert assign_devices("cuda:1", "", range(3), 2) == ["cuda:1"] * 3
    assert assign_devices("auto", "", range(3), 0) == ["cpu"] * 3
    assert assign_devices("cpu", "0", range(2), 8) == ["cpu", "cpu"]
    with pytest.raises(DsimError, match="gpus lists GPU 3, but this machine has 2"):
        assign_devices("cuda", "0,3", range(2), 2)
    with pytest.raises(DsimError, match="no CUDA device is visible"):
        assign_devices("cuda", "", range(2), 0)


def test_a_device_the_machine_lacks_is_refused_before_launch(tmp_path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device: the refusal needs one without")
    proc = run_dsim("launch", "--nodes", "2", "--topology", "ring", "--algorithm", "fedavg", "--device", "cuda",
                    "--quiet", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("dsim: error: device 'cuda' was asked for"), proc.stderr
    assert not (tmp_path / "runs").exists()


def test_each_node_records_its_device_and_peak_memory(tmp_path) -> None:
    out = tmp_path / "run"
    proc = run_dsim("launch", "--nodes", "2", "--topology", "star", "--algorithm", "base", "--device", "auto",
                    "--set", "dm.eval_epochs=1", "--set", "dm.eval_models=1", "--out", str(out), "--quiet",
                    timeout=180)
    assert proc.returncode == 0, proc.stderr
    import torch

    expected = "cuda:0" if torch.cuda.is_available() else "cpu"
    devices = json.loads((out / "summary.json").read_text())["devices"]
    assert sorted(devices) == ["0", "1", "2"]
    assert all(d["device"] == expected and d["peak_memory_mb"] > 10 for d in devices.values()), devices
    done = [json.loads(line) for line in (out / "nodes" / "1.jsonl").read_text().splitlines()
            if '"done"' in line]
    assert done and done[0]["device"] == expected and done[0]["peak_memory_mb"] > 10
