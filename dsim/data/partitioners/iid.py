"""IID: one random permutation cut into nearly equal parts."""

from __future__ import annotations

import numpy as np

from dsim.data.partitioners.base import Partitioner


class IID(Partitioner):
    """One random permutation of the train set cut into `num_parts` parts whose sizes differ by at
    most one (``np.array_split``); covers every sample."""

    name = "iid"
    doc = "one random permutation cut into nearly equal parts"

    def _split(self, labels: np.ndarray, num_parts: int, rng: np.random.Generator) -> list[np.ndarray]:
        return np.array_split(rng.permutation(labels.size), num_parts)
