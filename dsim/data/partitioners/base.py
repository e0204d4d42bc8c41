"""The `Partitioner` base class: a frozen msgspec Struct whose fields are the partitioner's parameters.

A partitioner is one class in one module of this package::

    class Dirichlet(Partitioner):
        name = "dirichlet"
        doc = "per class, proportions over nodes ~ Dir(beta)"

        beta: Annotated[float, msgspec.Meta(gt=0, description="concentration; smaller = more skewed")] = 0.5

        def _split(self, labels, num_parts, rng):
            ...

Defining the class registers it under `name` (``__init_subclass__``); the package discovers every
module, so its parameters become [data] keys and ``--flags`` without touching any other file.

Validation is lazy, as in Flower's partitioners: constructing one checks its parameters (types and
the `msgspec.Meta` bounds, then `check`); `split` checks what depends on the data (the labels, the
number of parts, the seed, then `check_split`). Every problem is a one-line `DsimError`.

Every node process computes the whole partition itself and keeps its own part, so `split` must
depend on nothing but its arguments: the one ``numpy.random.Generator(seed)`` it is handed, classes
visited in sorted order, stable sorts, no Python-hash or dict-order dependence. Loops should run over
classes, nodes or shards, never over samples (MNIST into 1000 nodes: milliseconds).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import ClassVar

import msgspec
import numpy as np

from dsim.errors import DsimError

__all__ = ["REGISTRY", "RESERVED", "ParamError", "Partitioner", "check_labels", "is_int", "label_counts"]

REGISTRY: dict[str, type[Partitioner]] = {}
"""Every defined partitioner by name, in definition order (the package imports its modules sorted)."""

RESERVED = frozenset({"dataset", "data_dir", "download", "partition", "val_fraction"})
"""The dataset-level keys of the flat [data] table: no partitioner parameter may take these names."""

_NAME = re.compile(r"^[a-z][a-z0-9-]*$")


class ParamError(DsimError):
    """A bad partitioner parameter; `key` and `reason` let callers name it as their table does."""

    def __init__(self, partitioner: str, key: str, reason: str) -> None:
        super().__init__(f"{partitioner}.{key}: {reason}")
        self.key = key
        self.reason = reason


class Partitioner(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Splits a train set's labels into `num_parts` disjoint parts; fields are its parameters.

    Subclasses set `name` (the CLI/config name) and `doc` (one line), declare their parameters as
    annotated fields with defaults, and implement `_split`. Optional hooks: `check` (parameter
    checks beyond the per-field bounds), `check_split` (checks that need the labels) and `describe`.
    """

    name: ClassVar[str]
    doc: ClassVar[str]

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:  # an intermediate base class: not a partitioner itself
            return
        where = f"{cls.__module__}.{cls.__qualname__}"
        if not isinstance(cls.name, str) or not _NAME.match(cls.name):
            raise TypeError(f"{where}: name must be lowercase letters, digits and '-', got {cls.name!r}")
        doc = cls.__dict__.get("doc")
        if not isinstance(doc, str) or not doc.strip() or "\n" in doc:
            raise TypeError(f"{where}: doc must be one non-empty line")
        if cls._split is Partitioner._split:
            raise TypeError(f"{where}: a partitioner must implement _split")
        previous = REGISTRY.get(cls.name)
        if previous is not None and (previous.__module__, previous.__qualname__) != (cls.__module__, cls.__qualname__):
            raise TypeError(f"partitioner name {cls.name!r} is taken by {previous.__module__}.{previous.__qualname__}")
        REGISTRY[cls.name] = cls  # a re-imported module replaces its own class

    def __post_init__(self) -> None:
        # msgspec.convert has checked the fields already; direct construction has not.
        for field in _fields(type(self)):
            try:
                value = msgspec.convert(getattr(self, field.name), field.type)
            except msgspec.ValidationError as exc:
                raise ParamError(self.name, field.name, str(exc)) from None
            msgspec.structs.force_setattr(self, field.name, value)  # e.g. 1 -> 1.0 for a float
        self.check()

    # ------------------------------------------------------------------ for subclasses

    def check(self) -> None:
        """Parameter checks beyond the fields' types and bounds: raise `self.invalid(key, reason)`."""

    def check_split(self, labels: np.ndarray, num_parts: int) -> None:
        """Checks that need the data (labels already checked, 1 <= num_parts <= len(labels))."""

    def _split(self, labels: np.ndarray, num_parts: int, rng: np.random.Generator) -> Sequence[np.ndarray]:
        """The partition itself: `num_parts` integer index arrays, in any order within each part."""
        raise NotImplementedError

    def describe(self) -> str:
        """One short phrase for titles, e.g. ``dirichlet(beta=0.5, min_size=10)``."""
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in msgspec.structs.asdict(self).items())
        return f"{self.name}({params})" if params else self.name

    def invalid(self, key: str, reason: str) -> ParamError:
        return ParamError(self.name, key, reason)

    # ------------------------------------------------------------------ the entry point

    def split(self, labels: np.ndarray, num_parts: int, seed: int) -> list[np.ndarray]:
        """Split the train set into `num_parts` disjoint parts: sorted int64 index arrays.

        The result depends only on (labels, num_parts, seed) and the parameters, so every
        process computes the same parts.
        """
        labels = check_labels(labels)
        n = labels.size
        if not is_int(num_parts) or num_parts < 1:
            raise DsimError(f"partition: the number of nodes must be an integer >= 1, got {num_parts!r}")
        if num_parts > n:
            raise DsimError(f"partition: {num_parts} nodes but only {n} training samples")
        if not is_int(seed) or seed < 0:
            raise DsimError(f"partition: seed must be an integer >= 0, got {seed!r}")
        num_parts, seed = int(num_parts), int(seed)
        self.check_split(labels, num_parts)
        parts = list(self._split(labels, num_parts, np.random.default_rng(seed)))
        if len(parts) != num_parts:
            raise RuntimeError(f"{self.name}: _split returned {len(parts)} parts for {num_parts} nodes")
        return [np.sort(p).astype(np.int64, copy=False) for p in parts]

    @classmethod
    def fields(cls) -> tuple[msgspec.structs.FieldInfo, ...]:
        """The parameters: name, resolved annotation (with its `msgspec.Meta`) and default."""
        return _fields(cls)


@functools.cache
def _fields(cls: type[Partitioner]) -> tuple[msgspec.structs.FieldInfo, ...]:
    return msgspec.structs.fields(cls)


def _fmt(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def check_labels(labels: np.ndarray) -> np.ndarray:
    """The labels as a 1-D non-negative integer array, else a DsimError."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DsimError(f"partition: labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    if labels.size and labels.min() < 0:
        raise DsimError("partition: labels must be >= 0")
    return labels


def label_counts(labels: np.ndarray, parts: Sequence[np.ndarray], num_classes: int) -> np.ndarray:
    """Samples of each class held by each node: an int64 (nodes, classes) array."""
    labels = np.asarray(labels)
    sizes = [len(p) for p in parts]
    if not parts or sum(sizes) == 0:
        return np.zeros((len(parts), num_classes), dtype=np.int64)
    node = np.repeat(np.arange(len(parts)), sizes)
    flat = node * num_classes + labels[np.concatenate(parts)]
    return np.bincount(flat, minlength=len(parts) * num_classes).reshape(len(parts), num_classes)
