"""Datasets, partitioners and each node's share of the data (every node computes its own).

Importing the package does not import torch: `dsim.data.datasets` (and its names here) load on
first use, so the config can import `dsim.data.partitioners` cheaply.
"""

from __future__ import annotations

import importlib
from typing import Any

from dsim.data.node_data import (
    DATASET_DEFAULTS,
    NodeData,
    data_settings,
    node_data,
    partition_fingerprint,
    partition_for,
)
from dsim.data.partitioners import (
    PARTITIONERS,
    Partitioner,
    get_partitioner,
    label_counts,
    make_partitioner,
    partition_params,
)

_LAZY = {"DATASETS": "dsim.data.datasets", "Dataset": "dsim.data.datasets", "load_dataset": "dsim.data.datasets"}

__all__ = [
    "DATASETS", "DATASET_DEFAULTS", "PARTITIONERS", "Dataset", "NodeData", "Partitioner", "data_settings",
    "get_partitioner", "label_counts", "load_dataset", "make_partitioner", "node_data", "partition_fingerprint",
    "partition_for", "partition_params",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
