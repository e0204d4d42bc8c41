"""Flower's ShardPartitioner: label-sorted shards of equal size, `shards` random ones per node."""

from __future__ import annotations

from typing import Annotated

import msgspec
import numpy as np

from dsim.data.partitioners.base import Partitioner
from dsim.errors import DsimError


class Shard(Partitioner):
    """Flower's ShardPartitioner: stable sort by label, cut into ``num_parts * shards`` shards of
    ``N // (num_parts * shards)`` samples, give each node `shards` of them drawn at random.

    The last ``N mod (num_parts * shards)`` samples of the label-sorted order (the tail of the highest
    class) belong to no node. A shard may straddle two classes, so a node holds at most
    ``2 * shards`` classes.
    """

    name = "shard"
    doc = "label-sorted shards of equal size, `shards` random ones per node (Flower)"

    shards: Annotated[int, msgspec.Meta(ge=1, description="shards per node")] = 2

    def check_split(self, labels: np.ndarray, num_parts: int) -> None:
        total = num_parts * self.shards
        if total > labels.size:
            raise DsimError(
                f"shard: {num_parts} nodes x {self.shards} shards = {total} shards but only "
                f"{labels.size} samples; use fewer nodes or shards"
            )

    def _split(self, labels: np.ndarray, num_parts: int, rng: np.random.Generator) -> list[np.ndarray]:
        total = num_parts * self.shards
        size = labels.size // total
        by_label = np.argsort(labels, kind="stable")[: total * size].reshape(total, size)
        picks = rng.permutation(total).reshape(num_parts, self.shards)
        return [by_label[row].ravel() for row in picks]

    def describe(self) -> str:
        return f"shard({self.shards} per node)"
