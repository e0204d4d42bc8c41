"""Partitioners: pure functions from (labels, nodes, method, seed) to each node's indices.

Every node process computes the whole partition itself and keeps its own part, so the
result must depend on nothing but the arguments: one explicit ``numpy.random.Generator(seed)``,
classes visited in sorted order, stable sorts, no Python-hash or dict-order dependence.
All loops run over classes or nodes, never over samples (MNIST into 1000 nodes: milliseconds).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from dsim.errors import DsimError

PARTITIONERS = ("iid", "shard", "dirichlet")


def partition_indices(
    labels: np.ndarray, num_nodes: int, method: str, *, seed: int, shards: int = 2,
    beta: float = 0.5, min_size: int = 10, class_floor: int = 0, max_retries: int = 100,
) -> list[np.ndarray]:
    """Split the train set into `num_nodes` disjoint parts; returns sorted int64 index arrays.

    - ``iid``: one random permutation cut into `num_nodes` nearly equal parts (sizes differ by
      at most one); covers every sample.
    - ``shard`` (Flower's ShardPartitioner): stable sort by label, cut into ``num_nodes*shards``
      shards of ``N // (num_nodes*shards)`` samples, give each node `shards` random shards.
      The last ``N mod (num_nodes*shards)`` samples of the label-sorted order (the tail of the
      highest class) belong to no node. A shard may straddle two classes, so a node holds at
      most ``2*shards`` classes.
    - ``dirichlet`` (NIID-Bench / DecentralizePy variant): per class, in sorted order, shuffle
      its samples, draw proportions ~ Dir(beta) over nodes, zero the share of every node that
      already holds >= N/num_nodes samples, renormalise, and cut with ``np.split`` on the
      cumulative proportions. Redraw the whole partition until every node has >= `min_size`
      samples, at most `max_retries` times, else DsimError. Covers every sample.
      ``class_floor > 0`` is CollabDM's variant: every node first receives `class_floor`
      random samples of every class, then the rest of each class is split as above.
    """
    labels = _check_labels(labels)
    n = labels.size
    _check_args(n, num_nodes, method, seed, shards, beta, min_size, class_floor, max_retries)
    rng = np.random.default_rng(seed)
    if method == "iid":
        parts = np.array_split(rng.permutation(n), num_nodes)
    elif method == "shard":
        parts = _shard(labels, num_nodes, shards, rng)
    else:
        parts = _dirichlet(labels, num_nodes, rng, beta, min_size, class_floor, max_retries)
    return [np.sort(p).astype(np.int64, copy=False) for p in parts]


def label_counts(labels: np.ndarray, parts: Sequence[np.ndarray], num_classes: int) -> np.ndarray:
    """Samples of each class held by each node: an int64 (nodes, classes) array."""
    labels = np.asarray(labels)
    sizes = [len(p) for p in parts]
    if not parts or sum(sizes) == 0:
        return np.zeros((len(parts), num_classes), dtype=np.int64)
    node = np.repeat(np.arange(len(parts)), sizes)
    flat = node * num_classes + labels[np.concatenate(parts)]
    return np.bincount(flat, minlength=len(parts) * num_classes).reshape(len(parts), num_classes)


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DsimError(f"partition: labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    if labels.size and labels.min() < 0:
        raise DsimError("partition: labels must be >= 0")
    return labels


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _check_args(n: int, num_nodes: int, method: str, seed: int, shards: int, beta: float,
                min_size: int, class_floor: int, max_retries: int) -> None:
    if method not in PARTITIONERS:
        raise DsimError(f"unknown partition {method!r}; choose one of: {', '.join(PARTITIONERS)}")
    if not _is_int(num_nodes) or num_nodes < 1:
        raise DsimError(f"partition: the number of nodes must be an integer >= 1, got {num_nodes!r}")
    if num_nodes > n:
        raise DsimError(f"partition: {num_nodes} nodes but only {n} training samples")
    if not _is_int(seed) or seed < 0:
        raise DsimError(f"partition: seed must be an integer >= 0, got {seed!r}")
    if method == "shard":
        if not _is_int(shards) or shards < 1:
            raise DsimError(f"partition: shards must be an integer >= 1, got {shards!r}")
        if num_nodes * shards > n:
            raise DsimError(
                f"shard: {num_nodes} nodes x {shards} shards = {num_nodes * shards} shards but only "
                f"{n} samples; use fewer nodes or shards"
            )
    if method == "dirichlet":
        if isinstance(beta, bool) or not isinstance(beta, int | float) or not math.isfinite(beta) or beta <= 0:
            raise DsimError(f"dirichlet: beta must be a finite number > 0, got {beta!r}")
        for key, value, low in (("min_size", min_size, 0), ("class_floor", class_floor, 0),
                                ("max_retries", max_retries, 1)):
            if not _is_int(value) or value < low:
                raise DsimError(f"dirichlet: {key} must be an integer >= {low}, got {value!r}")
        if num_nodes * min_size > n:
            raise DsimError(
                f"dirichlet: {num_nodes} nodes x min_size {min_size} = {num_nodes * min_size} "
                f"exceeds the {n} samples; lower min_size or use fewer nodes"
            )


def _shard(labels: np.ndarray, num_nodes: int, shards: int, rng: np.random.Generator) -> list[np.ndarray]:
    total = num_nodes * shards
    size = labels.size // total
    by_label = np.argsort(labels, kind="stable")[: total * size].reshape(total, size)
    picks = rng.permutation(total).reshape(num_nodes, shards)
    return [by_label[row].ravel() for row in picks]


def _dirichlet(labels: np.ndarray, num_nodes: int, rng: np.random.Generator, beta: float,
               min_size: int, class_floor: int, max_retries: int) -> list[np.ndarray]:
    n = labels.size
    classes = np.unique(labels)
    members = [np.flatnonzero(labels == c) for c in classes]
    if class_floor:
        short = [(int(c), len(m)) for c, m in zip(classes, members, strict=True)
                 if len(m) < class_floor * num_nodes]
        if short:
            c, have = short[0]
            raise DsimError(
                f"dirichlet: class_floor {class_floor} x {num_nodes} nodes needs "
                f"{class_floor * num_nodes} samples of class {c}, which has {have}"
            )
    nodes = np.arange(num_nodes)
    alpha = np.full(num_nodes, float(beta))
    cap = n / num_nodes
    owner = np.empty(n, dtype=np.int64)
    sizes = np.zeros(num_nodes, dtype=np.int64)
    for _ in range(max_retries):
        sizes[:] = 0
        for idx in members:
            idx = rng.permutation(idx)
            if class_floor:
                owner[idx[: class_floor * num_nodes]] = np.repeat(nodes, class_floor)
                sizes += class_floor
                idx = idx[class_floor * num_nodes:]
            counts = _dirichlet_counts(rng.dirichlet(alpha), sizes < cap, len(idx))
            owner[idx] = np.repeat(nodes, counts)
            sizes += counts
        if sizes.min() >= min_size:
            order = np.argsort(owner, kind="stable")
            return np.split(order, np.cumsum(sizes)[:-1])
    raise DsimError(
        f"dirichlet beta={beta:g} over {num_nodes} nodes could not give every node >= {min_size} "
        f"samples in {max_retries} tries (the smallest got {sizes.min()}); raise beta, lower "
        "min_size or use fewer nodes"
    )


def _dirichlet_counts(p: np.ndarray, open_nodes: np.ndarray, m: int) -> np.ndarray:
    """Samples per node for one class: zero full nodes' shares, cut m at cumulative proportions."""
    p = np.where(open_nodes, p, 0.0)
    if not p.sum() > 0:  # every open share underflowed (tiny beta): spread evenly over open nodes
        p = open_nodes.astype(np.float64) if open_nodes.any() else np.ones_like(p)
    cuts = np.minimum((np.cumsum(p / p.sum()) * m).astype(np.int64), m)
    cuts[-1] = m
    return np.diff(cuts, prepend=0)
