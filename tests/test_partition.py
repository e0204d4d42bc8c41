"""Partitioners and per-node data: disjoint, covering, reproducible across processes, skewed as named."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from dsim.data.datasets import MNIST_FILES, load_dataset
from dsim.data.node_data import data_config, node_data, partition_fingerprint
from dsim.data.partition import PARTITIONERS, _dirichlet_counts, label_counts, partition_indices
from dsim.errors import DsimError

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MNIST_DIR = SHARED / "data" / "mnist"
HAVE_MNIST = all((MNIST_DIR / f).is_file() for f in MNIST_FILES)
needs_mnist = pytest.mark.skipif(
    not HAVE_MNIST, reason=f"real MNIST files not present in {MNIST_DIR} (only on the development machine)")


def _labels(which: str) -> np.ndarray:
    if which == "mnist":
        if not HAVE_MNIST:
            pytest.skip(f"real MNIST files not present in {MNIST_DIR}")
        return load_dataset("mnist", SHARED / "data").train_y.numpy()
    return load_dataset("synthetic", seed=0).train_y.numpy()


def _entropy(counts: np.ndarray) -> float:
    p = counts / counts.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.nansum(-p * np.log2(p), axis=1).mean())


@pytest.mark.parametrize("which,nodes", [("synthetic", 7), ("mnist", 100)])
@pytest.mark.parametrize("method", PARTITIONERS)
def test_parts_are_sorted_disjoint_and_cover(which: str, nodes: int, method: str) -> None:
    labels = _labels(which)
    parts = partition_indices(labels, nodes, method, seed=1, shards=3)
    assert len(parts) == nodes
    assert all(p.dtype == np.int64 and np.all(np.diff(p) > 0) for p in parts)
    joined = np.concatenate(parts)
    assert len(np.unique(joined)) == len(joined)  # disjoint
    if method == "shard":  # documented remainder: the tail of the label-sorted order
        left = np.setdiff1d(np.arange(len(labels)), joined)
        assert len(left) == len(labels) % (nodes * 3)
        assert np.array_equal(left, np.sort(np.argsort(labels, kind="stable")[len(joined):]))
    else:
        assert len(joined) == len(labels)
    if method == "iid":
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


@pytest.mark.parametrize("method", PARTITIONERS)
def test_seed_decides_the_partition(method: str) -> None:
    labels = _labels("synthetic")
    a = partition_indices(labels, 5, method, seed=0)
    b = partition_indices(labels, 5, method, seed=0)
    c = partition_indices(labels, 5, method, seed=1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


_HASH_SCRIPT = textwrap.dedent("""
    import hashlib, sys
    from dsim.data.datasets import load_dataset
    from dsim.data.partition import partition_indices
    name, data_dir = sys.argv[1], sys.argv[2] or None
    labels = load_dataset(name, data_dir).train_y.numpy()
    for method in ("iid", "shard", "dirichlet"):
        parts = partition_indices(labels, 50, method, seed=7, beta=0.3)
        h = hashlib.sha256()
        for p in parts:
            h.update(p.astype("<i8").tobytes() + b"|")
        print(method, h.hexdigest())
""")


@pytest.mark.parametrize("which", ["synthetic", "mnist"])
def test_separate_processes_compute_the_same_parts(which: str) -> None:
    _labels(which)  # skips without MNIST
    data_dir = str(SHARED / "data") if which == "mnist" else ""
    procs = [subprocess.Popen([sys.executable, "-c", _HASH_SCRIPT, which, data_dir],
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outputs[0] == outputs[1] and len(outputs[0].splitlines()) == 3
    labels = _labels(which)
    parts = partition_indices(labels, 50, "dirichlet", seed=7, beta=0.3)
    h = hashlib.sha256(b"".join(p.astype("<i8").tobytes() + b"|" for p in parts)).hexdigest()
    assert f"dirichlet {h}" in outputs[0]


@pytest.mark.parametrize("which,nodes", [("synthetic", 10), ("mnist", 50)])
def test_label_entropy_falls_with_beta(which: str, nodes: int) -> None:
    labels = _labels(which)
    entropy = {beta: _entropy(label_counts(labels, partition_indices(
        labels, nodes, "dirichlet", seed=0, beta=beta, min_size=5), 10)) for beta in (10.0, 1.0, 0.1)}
    assert entropy[10.0] > entropy[1.0] > entropy[0.1]
    assert entropy[10.0] > 3.0 and entropy[0.1] < 2.0  # log2(10) = 3.32 is perfectly mixed


@pytest.mark.parametrize("shards", [1, 2, 3])
def test_shard_gives_at_most_two_classes_per_shard(shards: int) -> None:
    labels = _labels("mnist")
    parts = partition_indices(labels, 20, "shard", seed=3, shards=shards)
    counts = label_counts(labels, parts, 10)
    classes = (counts > 0).sum(axis=1)
    assert classes.max() <= 2 * shards
    assert all(len(p) == 60000 // (20 * shards) * shards for p in parts)


def test_class_floor_gives_every_node_every_class() -> None:
    labels = _labels("synthetic")
    counts = label_counts(labels, partition_indices(labels, 8, "dirichlet", seed=0, beta=0.05,
                                                    class_floor=3, min_size=0), 10)
    assert counts.min() >= 3 and counts.sum() == len(labels)
    with pytest.raises(DsimError, match="class_floor 30 x 8 nodes needs 240 samples of class 0"):
        partition_indices(labels, 8, "dirichlet", seed=0, class_floor=30)


def test_dirichlet_zeroes_the_share_of_full_nodes() -> None:
    counts = _dirichlet_counts(np.array([0.5, 0.2, 0.3]), np.array([False, True, True]), 100)
    assert counts.tolist() == [0, 40, 60]
    assert _dirichlet_counts(np.array([0.0, 0.0, 1.0]), np.array([True, True, False]), 10).tolist() == [5, 5, 0]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("which,nodes,min_size", [("mnist", 500, 100), ("synthetic", 100, 15)])
def test_impossible_dirichlet_fails_clearly_and_quickly(which: str, nodes: int, min_size: int) -> None:
    labels = _labels(which)
    with pytest.raises(DsimError) as err:
        partition_indices(labels, nodes, "dirichlet", seed=0, beta=0.01, min_size=min_size)
    assert f"dirichlet beta=0.01 over {nodes} nodes could not give every node >= {min_size} samples " \
           "in 100 tries" in str(err.value)
    assert "raise beta, lower min_size or use fewer nodes" in str(err.value)


@pytest.mark.parametrize("kwargs,message", [
    ({"num_nodes": 0}, "number of nodes must be an integer >= 1"),
    ({"num_nodes": 2001}, "2001 nodes but only 2000 training samples"),
    ({"method": "kshard"}, "unknown partition 'kshard'; choose one of: iid, shard, dirichlet"),
    ({"method": "shard", "shards": 0}, "shards must be an integer >= 1"),
    ({"method": "shard", "num_nodes": 1000, "shards": 3}, "3000 shards but only 2000 samples"),
    ({"method": "dirichlet", "beta": 0.0}, "beta must be a finite number > 0"),
    ({"method": "dirichlet", "beta": float("nan")}, "beta must be a finite number > 0"),
    ({"method": "dirichlet", "num_nodes": 300, "min_size": 10}, "300 nodes x min_size 10 = 3000 exceeds"),
    ({"seed": -1}, "seed must be an integer >= 0"),
])
def test_invalid_arguments_are_dsim_errors(kwargs: dict, message: str) -> None:
    args = {"num_nodes": 4, "method": "iid", "seed": 0, **kwargs}
    with pytest.raises(DsimError, match=message.replace("(", r"\(")):
        partition_indices(_labels("synthetic"), args.pop("num_nodes"), args.pop("method"), **args)


def test_label_counts_match_a_direct_count() -> None:
    labels = np.array([0, 1, 1, 2, 2, 2])
    assert label_counts(labels, [np.array([0, 3]), np.array([1, 2, 4, 5])], 4).tolist() == \
        [[1, 0, 1, 0], [0, 2, 2, 0]]
    assert label_counts(labels, [np.array([], dtype=np.int64)], 3).tolist() == [[0, 0, 0]]


# ------------------------------------------------------------------ node_data


def test_node_data_splits_parts_and_fingerprints() -> None:
    cfg = {"dataset": "synthetic", "partition": "dirichlet", "beta": 1.0, "val_fraction": 0.2}
    nodes = [node_data(cfg, num_parts=4, part=k, seed=5) for k in range(4)]
    server = node_data(cfg, num_parts=4, part=None, seed=5)
    assert len({n.fingerprint for n in [*nodes, server]}) == 1
    assert len({n.part_fingerprint for n in nodes}) == 4
    assert len(server.train_y) == 0 and len(server.indices) == 0
    assert len(server.dataset.test_y) == 500 and server.train_x.shape[1:] == (1, 16, 16)
    ds = nodes[0].dataset
    for n in nodes:
        assert len(n.val_y) == int(0.2 * len(n.indices)) and len(n.train_y) + len(n.val_y) == len(n.indices)
        assert sorted(n.train_y.tolist() + n.val_y.tolist()) == sorted(ds.train_y[n.indices].tolist())
    again = node_data(cfg, num_parts=4, part=2, seed=5)
    assert again.part_fingerprint == nodes[2].part_fingerprint and np.array_equal(again.val_y, nodes[2].val_y)
    assert node_data(cfg, num_parts=4, part=2, seed=6).fingerprint != nodes[0].fingerprint
    assert node_data({**cfg, "beta": 0.5}, num_parts=4, part=2, seed=5).fingerprint != nodes[0].fingerprint
    assert node_data(cfg, num_parts=5, part=2, seed=5).fingerprint != nodes[0].fingerprint


def test_fingerprint_follows_the_files_digest() -> None:
    ds = load_dataset("digits")
    conf = data_config({})
    other = dataclasses.replace(ds, files_digest="0" * 64)
    assert partition_fingerprint(ds, conf, 0, 3) != partition_fingerprint(other, conf, 0, 3)
    assert partition_fingerprint(ds, conf, 0, 3) == partition_fingerprint(ds, data_config({}), 0, 3)
    assert node_data({}, num_parts=3, part=0, seed=0).fingerprint == partition_fingerprint(ds, conf, 0, 3)


@needs_mnist
def test_node_data_on_mnist_agrees_and_refuses_an_altered_file(tmp_path: Path) -> None:
    cfg = {"dataset": "mnist", "data_dir": str(SHARED / "data"), "partition": "shard"}
    a = node_data(cfg, num_parts=10, part=0, seed=0)
    b = node_data(cfg, num_parts=10, part=9, seed=0)
    assert a.fingerprint == b.fingerprint and len(a.indices) == len(b.indices) == 6000
    copy = tmp_path / "mnist"
    shutil.copytree(MNIST_DIR, copy)
    labels = copy / "train-labels-idx1-ubyte.gz"
    data = bytearray(labels.read_bytes())
    data[-1] ^= 1
    labels.write_bytes(bytes(data))
    with pytest.raises(DsimError, match="train-labels-idx1-ubyte.gz: MD5 .* does not match"):
        node_data({**cfg, "data_dir": str(tmp_path)}, num_parts=10, part=0, seed=0)


@pytest.mark.parametrize("cfg,message", [
    ({"datset": "mnist"}, "unknown \\[data\\] key 'datset'; valid keys: dataset, data_dir"),
    ({"dataset": "svhn"}, "unknown dataset 'svhn'; choose one of"),
    ({"partition": "kshard"}, "unknown partition 'kshard'; choose one of: iid, shard, dirichlet"),
    ({"shards": 2.5}, "data.shards must be an integer"),
    ({"val_fraction": 1.0}, r"data.val_fraction must be in \[0, 1\)"),
    ({"download": "yes"}, "data.download must be true or false"),
])
def test_bad_data_config_is_a_dsim_error(cfg: dict, message: str) -> None:
    with pytest.raises(DsimError, match=message):
        node_data(cfg, num_parts=2, part=0, seed=0)
    with pytest.raises(DsimError, match="data part must be an integer in 0..1"):
        node_data({}, num_parts=2, part=2, seed=0)
