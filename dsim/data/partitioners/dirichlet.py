"""Dirichlet label skew, the NIID-Bench / DecentralizePy variant, with CollabDM's class floor."""

from __future__ import annotations

import math
from typing import Annotated, ClassVar

import msgspec
import numpy as np

from dsim.data.partitioners.base import Partitioner
from dsim.errors import DsimError


class Dirichlet(Partitioner):
    """Per class, proportions over nodes ~ Dir(beta): the NIID-Bench / DecentralizePy variant.

    Per class, in sorted order: shuffle its samples, draw proportions ~ Dir(beta) over the nodes,
    zero the share of every node that already holds >= N / num_parts samples, renormalise, and cut
    at the cumulative proportions. Redraw the whole partition until every node has >= `min_size`
    samples, at most `max_retries` times, else a DsimError (the reference loops forever). Covers
    every sample.

    ``class_floor > 0`` is CollabDM's variant: every node first receives `class_floor` random
    samples of every class, then the rest of each class is split as above. (Flower's
    DirichletPartitioner, which zeroes nothing by default, is a different variant.)
    """

    name = "dirichlet"
    doc = "per class, proportions over nodes ~ Dir(beta) (NIID-Bench; class_floor: CollabDM)"
    max_retries: ClassVar[int] = 100

    beta: Annotated[float, msgspec.Meta(gt=0, description="concentration; smaller = more skewed")] = 0.5
    min_size: Annotated[int, msgspec.Meta(ge=0, description="resample until every node has this many samples")] = 10
    class_floor: Annotated[int, msgspec.Meta(ge=0, description="samples of every class given to every node first")] = 0

    def check(self) -> None:
        if not math.isfinite(self.beta):
            raise self.invalid("beta", f"Expected a finite `float` > 0.0, got {self.beta!r}")

    def check_split(self, labels: np.ndarray, num_parts: int) -> None:
        n = labels.size
        if num_parts * self.min_size > n:
            raise DsimError(
                f"dirichlet: {num_parts} nodes x min_size {self.min_size} = {num_parts * self.min_size} "
                f"exceeds the {n} samples; lower min_size or use fewer nodes"
            )
        if self.class_floor:
            classes, have = np.unique(labels, return_counts=True)
            need = self.class_floor * num_parts
            short = np.flatnonzero(have < need)
            if short.size:
                raise DsimError(
                    f"dirichlet: class_floor {self.class_floor} x {num_parts} nodes needs {need} samples "
                    f"of class {int(classes[short[0]])}, which has {int(have[short[0]])}"
                )

    def describe(self) -> str:
        floor = f", class_floor={self.class_floor}" if self.class_floor else ""
        return f"dirichlet(beta={self.beta:g}, min_size={self.min_size}{floor})"

    def _split(self, labels: np.ndarray, num_parts: int, rng: np.random.Generator) -> list[np.ndarray]:
        n, floor = labels.size, self.class_floor
        members = [np.flatnonzero(labels == c) for c in np.unique(labels)]
        nodes = np.arange(num_parts)
        alpha = np.full(num_parts, self.beta)
        cap = n / num_parts
        owner = np.empty(n, dtype=np.int64)
        sizes = np.zeros(num_parts, dtype=np.int64)
        for _ in range(self.max_retries):
            sizes[:] = 0
            for idx in members:
                idx = rng.permutation(idx)
                if floor:
                    owner[idx[: floor * num_parts]] = np.repeat(nodes, floor)
                    sizes += floor
                    idx = idx[floor * num_parts:]
                counts = dirichlet_counts(rng.dirichlet(alpha), sizes < cap, len(idx))
                owner[idx] = np.repeat(nodes, counts)
                sizes += counts
            if sizes.min() >= self.min_size:
                order = np.argsort(owner, kind="stable")
                return np.split(order, np.cumsum(sizes)[:-1])
        raise DsimError(
            f"dirichlet beta={self.beta:g} over {num_parts} nodes could not give every node >= "
            f"{self.min_size} samples in {self.max_retries} tries (the smallest got {sizes.min()}); "
            "raise beta, lower min_size or use fewer nodes"
        )


def dirichlet_counts(p: np.ndarray, open_nodes: np.ndarray, m: int) -> np.ndarray:
    """Samples per node for one class: zero full nodes' shares, cut m at cumulative proportions."""
    p = np.where(open_nodes, p, 0.0)
    if not p.sum() > 0:  # every open share underflowed (tiny beta): spread evenly over open nodes
        p = open_nodes.astype(np.float64) if open_nodes.any() else np.ones_like(p)
    cuts = np.minimum((np.cumsum(p / p.sum()) * m).astype(np.int64), m)
    cuts[-1] = m
    return np.diff(cuts, prepend=0)
