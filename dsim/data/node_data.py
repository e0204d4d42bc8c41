"""One node's share of the data, computed locally from the [data] config and the run seed.

Every node process loads the dataset, runs the same partitioner with the same seed and keeps
part `part`. The `fingerprint` (dataset file digest + partitioner + its parameters + seed +
number of parts) is equal on every node exactly when they all computed the same partition:
the runtime exchanges it at start-up to catch nodes whose files or configs differ.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dsim.config import DATA_DEFAULTS
from dsim.data.datasets import DATASETS, Dataset, load_dataset
from dsim.data.partition import PARTITIONERS, label_counts, partition_indices
from dsim.errors import DsimError

__all__ = ["DATA_DEFAULTS", "NodeData", "data_config", "partition_fingerprint", "label_counts", "node_data", "partition_for"]

_PARAMS = {"iid": (), "shard": ("shards",), "dirichlet": ("beta", "min_size", "class_floor")}


@dataclass
class NodeData:
    """This node's train/validation tensors plus the full dataset (its test set for the server)."""

    dataset: Dataset
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    indices: np.ndarray
    fingerprint: str
    part_fingerprint: str


def data_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The [data] table over DATA_DEFAULTS, checked: unknown keys and bad values are DsimErrors."""
    unknown = sorted(set(cfg) - set(DATA_DEFAULTS))
    if unknown:
        raise DsimError(f"unknown [data] key {unknown[0]!r}; valid keys: {', '.join(DATA_DEFAULTS)}")
    conf = {**DATA_DEFAULTS, **cfg}
    if conf["dataset"] not in DATASETS:
        raise DsimError(f"unknown dataset {conf['dataset']!r}; choose one of: {', '.join(DATASETS)}")
    if conf["partition"] not in PARTITIONERS:
        raise DsimError(f"unknown partition {conf['partition']!r}; choose one of: {', '.join(PARTITIONERS)}")
    if not isinstance(conf["data_dir"], str | Path):
        raise DsimError(f"data.data_dir must be a path string, got {conf['data_dir']!r}")
    conf["data_dir"] = str(conf["data_dir"])
    if not isinstance(conf["download"], bool):
        raise DsimError(f"data.download must be true or false, got {conf['download']!r}")
    for key in ("shards", "min_size", "class_floor"):
        if isinstance(conf[key], bool) or not isinstance(conf[key], int):
            raise DsimError(f"data.{key} must be an integer, got {conf[key]!r}")
    for key in ("beta", "val_fraction"):
        if isinstance(conf[key], bool) or not isinstance(conf[key], int | float):
            raise DsimError(f"data.{key} must be a number, got {conf[key]!r}")
        conf[key] = float(conf[key])
    if not 0.0 <= conf["val_fraction"] < 1.0:
        raise DsimError(f"data.val_fraction must be in [0, 1), got {conf['val_fraction']!r}")
    return conf


def partition_fingerprint(ds: Dataset, conf: Mapping[str, Any], seed: int, num_parts: int) -> str:
    """sha256 over what decides the partition: equal on two nodes iff they agree on all of it."""
    method = conf["partition"]
    record = {
        "dataset": ds.name, "files": ds.files_digest, "partition": method,
        "params": {k: conf[k] for k in _PARAMS[method]}, "seed": seed, "num_parts": num_parts,
        "val_fraction": conf["val_fraction"],
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def _indices_fingerprint(indices: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(indices, dtype="<i8").tobytes()).hexdigest()


@functools.lru_cache(maxsize=4)
def _parts(fingerprint: str, name: str, data_dir: str, download: bool, method: str,
           params: tuple[tuple[str, Any], ...], seed: int, num_parts: int) -> tuple[np.ndarray, ...]:
    """Cached per process: many nodes of one run share a process and the same partition."""
    del fingerprint  # keys the cache on the dataset files' digest too
    ds = load_dataset(name, data_dir or None, download=download, seed=seed)
    parts = partition_indices(ds.train_y.numpy(), num_parts, method, seed=seed, **dict(params))
    for p in parts:
        p.flags.writeable = False
    return tuple(parts)


def partition_for(cfg: Mapping[str, Any], *, num_parts: int,
                  seed: int) -> tuple[Dataset, tuple[np.ndarray, ...], str]:
    """The dataset, every part's indices and the fingerprint: what `dsim partition` shows."""
    conf = data_config(cfg)
    ds = load_dataset(conf["dataset"], conf["data_dir"] or None, download=conf["download"], seed=seed)
    fingerprint = partition_fingerprint(ds, conf, seed, num_parts)
    method = conf["partition"]
    params = tuple((k, conf[k]) for k in _PARAMS[method])
    parts = _parts(fingerprint, conf["dataset"], conf["data_dir"], conf["download"], method,
                   params, seed, num_parts)
    return ds, parts, fingerprint


def node_data(cfg: Mapping[str, Any], *, num_parts: int, part: int | None, seed: int) -> NodeData:
    """Part `part` of `num_parts` (None: a node without data, e.g. the server), split train/val.

    The validation split is a seeded shuffle of this part alone (Generator([seed, part])), so
    it too is identical wherever the node runs.
    """
    ds, parts, fingerprint = partition_for(cfg, num_parts=num_parts, seed=seed)
    if part is None:
        empty_x = ds.train_x[:0]
        empty_y = ds.train_y[:0]
        indices = np.empty(0, dtype=np.int64)
        return NodeData(ds, empty_x, empty_y, empty_x, empty_y, indices, fingerprint,
                        _indices_fingerprint(indices))
    if isinstance(part, bool) or not isinstance(part, int) or not 0 <= part < num_parts:
        raise DsimError(f"data part must be an integer in 0..{num_parts - 1}, got {part!r}")
    indices = parts[part].copy()  # the cached parts stay read-only
    val_fraction = data_config(cfg)["val_fraction"]
    shuffled = np.random.default_rng([seed, part]).permutation(indices)
    n_val = int(val_fraction * len(indices))
    val_idx = torch.from_numpy(np.sort(shuffled[:n_val]))
    train_idx = torch.from_numpy(np.sort(shuffled[n_val:]))
    return NodeData(
        dataset=ds, train_x=ds.train_x[train_idx], train_y=ds.train_y[train_idx],
        val_x=ds.train_x[val_idx], val_y=ds.train_y[val_idx], indices=indices,
        fingerprint=fingerprint, part_fingerprint=_indices_fingerprint(indices),
    )
