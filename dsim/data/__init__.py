"""Datasets, partitioners and each node's share of the data (every node computes its own)."""

from dsim.data.datasets import DATASETS, Dataset, load_dataset
from dsim.data.node_data import DATA_DEFAULTS, NodeData, data_config, node_data, partition_for
from dsim.data.partition import PARTITIONERS, label_counts, partition_indices

__all__ = [
    "DATASETS", "DATA_DEFAULTS", "PARTITIONERS", "Dataset", "NodeData", "data_config", "label_counts",
    "load_dataset", "node_data", "partition_for", "partition_indices",
]
