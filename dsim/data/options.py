"""The [data] table: the dataset, the partitioner and its parameters, declared once.

The dataset-level keys are declared here; the partitioner keys come from the partitioner registry
(each partitioner class declares its own parameters), so a new partitioner adds its keys, its
`--flags` and its fingerprint without touching this file.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from dsim.data.partitioners import PARTITIONERS, make_partitioner, partition_params
from dsim.options import Options

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "synthetic")
DatasetName = Literal[DATASETS]  # type: ignore[valid-type]
PartitionName = Literal[tuple(sorted(PARTITIONERS))]  # type: ignore[valid-type]

_DATASET_KEYS = [
    ("dataset", Annotated[DatasetName, Meta(description="digits (bundled), mnist, fashion-mnist, cifar10 or synthetic")], "digits"),
    ("data_dir", Annotated[str, Meta(description="folder with the dataset files (DIR, DIR/<name>/ or torchvision's layout)")], ""),
    ("download", Annotated[bool, Meta(description="fetch missing dataset files, checked against their MD5s")], False),
    ("partition", Annotated[PartitionName, Meta(description="how the train set is split: " + ", ".join(
        f"{name} ({cls.doc})" for name, cls in sorted(PARTITIONERS.items())))], "iid"),
    ("val_fraction", Annotated[float, Meta(ge=0, lt=1, description="share of each node's part kept for validation")], 0.1),
]

def _check_partitioner(self: Options) -> None:
    """Each partitioner's own cross-key checks (e.g. a finite beta), at config time, without torch."""
    make_partitioner(self.partition, msgspec.structs.asdict(self))


DataOptions: type[Options] = msgspec.defstruct(
    "DataOptions",
    _DATASET_KEYS + [(key, p.annotation, p.default) for key, p in partition_params().items()],
    bases=(Options,), kw_only=True, frozen=True, forbid_unknown_fields=True,
    namespace={"__doc__": "The dataset every node loads and how it is split between the nodes.",
               "__post_init__": _check_partitioner},
)
