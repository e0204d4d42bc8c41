"""One node's share of the data, computed locally from the [data] table and the run seed.

Every node process loads the dataset, runs the same partitioner with the same seed and keeps
part `part`. The `fingerprint` (dataset file digest + partitioner + its parameters + seed +
number of parts + validation share) is equal on every node exactly when they all computed the
same partition: the runtime exchanges it at start-up to catch nodes whose files or configs differ.

The [data] table is flat: the dataset-level keys (`DATASET_DEFAULTS`) next to every partitioner's
parameters; which of those matter is read off the chosen partitioner's class. Importing this module
does not import torch (the dataset module is imported when data is loaded).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from dsim.data.options import DataOptions
from dsim.data.partitioners import Partitioner, label_counts, make_partitioner
from dsim.data.partitioners.base import RESERVED
from dsim.errors import DsimError

if TYPE_CHECKING:
    import torch

    from dsim.data.datasets import Dataset

__all__ = ["DATASET_DEFAULTS", "NodeData", "data_settings", "label_counts", "node_data",
           "partition_fingerprint", "partition_for"]

DATASET_DEFAULTS: dict[str, Any] = {key: getattr(DataOptions(), key) for key in RESERVED}
"""The dataset-level keys of [data] and the values a missing key takes (declared in dsim.data.options);
the partitioner's own parameters default to its class's field defaults."""


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


def data_settings(cfg: Mapping[str, Any] | msgspec.Struct) -> tuple[dict[str, Any], Partitioner]:
    """The dataset-level keys (over DATASET_DEFAULTS) and the partitioner, both checked.

    Only what this module uses is checked; other keys are left to the config (which checks the
    whole table before launch).
    """
    from dsim.data.datasets import DATASETS

    if isinstance(cfg, msgspec.Struct):
        cfg = msgspec.structs.asdict(cfg)
    conf = {**DATASET_DEFAULTS, **{k: cfg[k] for k in DATASET_DEFAULTS if k in cfg}}
    if conf["dataset"] not in DATASETS:
        raise DsimError(f"unknown dataset {conf['dataset']!r}; choose one of: {', '.join(DATASETS)}")
    if not isinstance(conf["data_dir"], str | Path):
        raise DsimError(f"data.data_dir must be a path string, got {conf['data_dir']!r}")
    conf["data_dir"] = str(conf["data_dir"])
    if not isinstance(conf["download"], bool):
        raise DsimError(f"data.download must be true or false, got {conf['download']!r}")
    fraction = conf["val_fraction"]
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0.0 <= fraction < 1.0:
        raise DsimError(f"data.val_fraction must be a number in [0, 1), got {fraction!r}")
    conf["val_fraction"] = float(fraction)
    return conf, make_partitioner(conf["partition"], cfg)


def _fingerprint(ds: Dataset, partitioner: Partitioner, val_fraction: float, seed: int, num_parts: int) -> str:
    record = {
        "dataset": ds.name, "files": ds.files_digest, "partition": partitioner.name,
        "params": msgspec.to_builtins(partitioner), "seed": seed, "num_parts": num_parts,
        "val_fraction": val_fraction,
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def partition_fingerprint(ds: Dataset, cfg: Mapping[str, Any], seed: int, num_parts: int) -> str:
    """sha256 over what decides the partition: equal on two nodes iff they agree on all of it."""
    conf, partitioner = data_settings(cfg)
    return _fingerprint(ds, partitioner, conf["val_fraction"], seed, num_parts)


def _indices_fingerprint(indices: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(indices, dtype="<i8").tobytes()).hexdigest()


@functools.lru_cache(maxsize=4)
def _parts(fingerprint: str, name: str, data_dir: str, download: bool, partitioner: Partitioner,
           seed: int, num_parts: int) -> tuple[np.ndarray, ...]:
    """Cached per process: many nodes of one run share a process and the same partition."""
    from dsim.data.datasets import load_dataset

    del fingerprint  # keys the cache on the dataset files' digest too
    ds = load_dataset(name, data_dir or None, download=download, seed=seed)
    parts = partitioner.split(ds.train_y.numpy(), num_parts, seed)
    for p in parts:
        p.flags.writeable = False
    return tuple(parts)


def _partition(cfg: Mapping[str, Any], num_parts: int,
               seed: int) -> tuple[Dataset, tuple[np.ndarray, ...], str, dict[str, Any]]:
    from dsim.data.datasets import load_dataset

    conf, partitioner = data_settings(cfg)
    ds = load_dataset(conf["dataset"], conf["data_dir"] or None, download=conf["download"], seed=seed)
    fingerprint = _fingerprint(ds, partitioner, conf["val_fraction"], seed, num_parts)
    parts = _parts(fingerprint, conf["dataset"], conf["data_dir"], conf["download"], partitioner,
                   seed, num_parts)
    return ds, parts, fingerprint, conf


def partition_for(cfg: Mapping[str, Any], *, num_parts: int,
                  seed: int) -> tuple[Dataset, tuple[np.ndarray, ...], str]:
    """The dataset, every part's indices and the fingerprint: what `dsim partition` shows."""
    ds, parts, fingerprint, _ = _partition(cfg, num_parts, seed)
    return ds, parts, fingerprint


def node_data(cfg: Mapping[str, Any], *, num_parts: int, part: int | None, seed: int) -> NodeData:
    """Part `part` of `num_parts` (None: a node without data, e.g. the server), split train/val.

    The validation split is a seeded shuffle of this part alone (Generator([seed, part])), so
    it too is identical wherever the node runs.
    """
    import torch

    ds, parts, fingerprint, conf = _partition(cfg, num_parts, seed)
    if part is None:
        empty_x = ds.train_x[:0]
        empty_y = ds.train_y[:0]
        indices = np.empty(0, dtype=np.int64)
        return NodeData(ds, empty_x, empty_y, empty_x, empty_y, indices, fingerprint,
                        _indices_fingerprint(indices))
    if isinstance(part, bool) or not isinstance(part, int) or not 0 <= part < num_parts:
        raise DsimError(f"data part must be an integer in 0..{num_parts - 1}, got {part!r}")
    indices = parts[part].copy()  # the cached parts stay read-only
    shuffled = np.random.default_rng([seed, part]).permutation(indices)
    n_val = int(conf["val_fraction"] * len(indices))
    val_idx = torch.from_numpy(np.sort(shuffled[:n_val]))
    train_idx = torch.from_numpy(np.sort(shuffled[n_val:]))
    return NodeData(
        dataset=ds, train_x=ds.train_x[train_idx], train_y=ds.train_y[train_idx],
        val_x=ds.train_x[val_idx], val_y=ds.train_y[val_idx], indices=indices,
        fingerprint=fingerprint, part_fingerprint=_indices_fingerprint(indices),
    )
