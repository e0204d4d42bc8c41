"""DecentralizePy's KShardDataPartitioner: `shards` contiguous label-sorted slices per node."""

from __future__ import annotations

from typing import Annotated

import msgspec
import numpy as np

from dsim.data.partitioners.base import Partitioner
from dsim.errors import DsimError


class KShard(Partitioner):
    """DecentralizePy's KShardDataPartitioner (the setting of the distilled-data paper).

    Sort the train indices by label (stable). Each node in turn takes `shards` slices of
    ``(N // num_parts) // shards`` consecutive entries of what remains, each starting at a random
    offset ``rng.integers(len(remaining))``; a slice that runs past the end wraps around to the
    start of what remains, and the slice is removed before the next is drawn. Every node gets
    exactly ``(N // num_parts) // shards * shards`` samples; the rest belongs to no node.

    Unlike Flower's shards (`shard`), a slice starts anywhere, so it usually straddles classes:
    on CIFAR-10 labels with 10 nodes, classes per node average 3.77 / 5.70 / 7.62 at 2 / 5 / 10
    shards (1000 seeds), where `shard` gives 1.95 / 4.20 / 6.67.
    """

    name = "kshard"
    doc = "`shards` label-sorted slices at random offsets of what remains per node (DecentralizePy)"

    shards: Annotated[int, msgspec.Meta(ge=1, description="shards per node")] = 2

    def check_split(self, labels: np.ndarray, num_parts: int) -> None:
        per_node = labels.size // num_parts
        if per_node < self.shards:
            raise DsimError(
                f"kshard: {labels.size} samples over {num_parts} nodes is {per_node} per node, fewer "
                f"than {self.shards} shards; use fewer nodes or shards"
            )

    def _split(self, labels: np.ndarray, num_parts: int, rng: np.random.Generator) -> list[np.ndarray]:
        length = (labels.size // num_parts) // self.shards
        remaining = np.argsort(labels, kind="stable")
        parts = []
        for _ in range(num_parts):
            taken = []
            for _ in range(self.shards):
                left = remaining.size
                start = int(rng.integers(left))
                end = start + length
                if end > left:  # runs past the end: wrap around to the start of what remains
                    taken += [remaining[start:], remaining[: end - left]]
                    remaining = remaining[end - left: start]
                else:
                    taken.append(remaining[start:end])
                    remaining = np.concatenate([remaining[:start], remaining[end:]])
            parts.append(np.concatenate(taken))
        return parts

    def describe(self) -> str:
        return f"kshard({self.shards} per node)"
