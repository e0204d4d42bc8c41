"""The [data] table: the dataset, the partitioner and its parameters, declared once.

The dataset-level keys are declared here; the partitioner keys come from the partitioner registry
(each partitioner class declares its own parameters), so a new partitioner adds its keys, its
`--flags` and its fingerprint without touching this file.
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta

from dsim.options import Options

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "synthetic")
Dataset = Literal["digits", "mnist", "fashion-mnist", "cifar10", "synthetic"]


class DataOptions(Options):
    """The dataset every node loads and how it is split between the nodes."""

    dataset: Annotated[Dataset, Meta(description="digits (bundled), mnist, fashion-mnist, cifar10 or synthetic")] = "digits"
    data_dir: Annotated[str, Meta(description="folder with the dataset files (DIR, DIR/<name>/ or torchvision's layout)")] = ""
    download: Annotated[bool, Meta(description="fetch missing dataset files, checked against their MD5s")] = False
    partition: Annotated[Literal["iid", "shard", "dirichlet"], Meta(description="how the train set is split between the nodes")] = "iid"
    val_fraction: Annotated[float, Meta(ge=0, lt=1, description="share of each node's part kept for validation")] = 0.1
    shards: Annotated[int, Meta(ge=1, description="shard: shards per node")] = 2
    beta: Annotated[float, Meta(gt=0, description="dirichlet: concentration; smaller = more skewed")] = 0.5
    min_size: Annotated[int, Meta(ge=0, description="dirichlet: resample until every node has this many samples")] = 10
    class_floor: Annotated[int, Meta(ge=0, description="dirichlet: samples of every class given to every node first")] = 0
DATA_DEFAULTS = {k: getattr(DataOptions(), k) for k in DataOptions.__struct_fields__}  # transitional, for node_data
