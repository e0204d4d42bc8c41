"""Partitioners: a registry of small `Partitioner` classes, one module each, found by discovery.

Importing this package imports every module in it, so a new partitioner is one file here holding
one `Partitioner` subclass (see `base`). Its parameters then are [data] keys (`partition_params`,
which the config builds its table from), ``--flags`` of `dsim partition` and `dsim launch`
(`click_options`) and part of the partition fingerprint, with no other file to edit.

The [data] table is flat: ``partition = "dirichlet"`` next to ``beta``, ``shards``, ... of every
partitioner. A parameter name shared by two partitioners (``shards``: shard, kshard) is one key,
so both must declare it with the same type, bounds and default; that is checked at import.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import typing
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, NamedTuple, TypeVar

import msgspec

from dsim.data.partitioners.base import (
    REGISTRY,
    RESERVED,
    ParamError,
    Partitioner,
    check_labels,
    label_counts,
)
from dsim.errors import DsimError

__all__ = [
    "PARTITIONERS", "Param", "ParamError", "Partitioner", "check_labels", "click_options", "get_partitioner",
    "label_counts", "make_partitioner", "partition_params", "pop_partition_params",
]

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

PARTITIONERS: dict[str, type[Partitioner]] = REGISTRY
"""Every partitioner by name (the live registry: a subclass defined later appears here too)."""

F = TypeVar("F", bound=Callable[..., Any])
_AT = re.compile(r"^(?P<what>.*?) - at `\$\.(?P<key>[^`]+)`$", re.S)
_DOC_KEYS = ("description", "title", "examples")  # Meta entries that document rather than constrain
_META_KEYS = ("gt", "ge", "lt", "le", "multiple_of", "pattern", "min_length", "max_length", "tz", "title",
              "description", "examples", "extra_json_schema", "extra")


_BASE_ATTRS = frozenset(dir(Partitioner)) | {"name", "doc"}


class Param(NamedTuple):
    """One [data] key a partitioner declares; `description` names the partitioners using it."""

    annotation: Any  # Annotated[base type, msgspec.Meta(bounds..., description=...)]
    default: Any
    description: str


def get_partitioner(name: str) -> type[Partitioner]:
    """The class registered as `name`, else a DsimError listing the choices."""
    cls = PARTITIONERS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise DsimError(f"unknown partition {name!r}; choose one of: {', '.join(PARTITIONERS)}")
    return cls


def make_partitioner(name: str, params: Mapping[str, Any] | None = None, *, table: str = "data") -> Partitioner:
    """Partitioner `name` with its parameters taken from `params`, checked.

    `params` may be the whole flat [data] table: only the partitioner's own fields are read and
    missing ones take their defaults. A bad value is a one-line DsimError naming the key as
    ``<table>.<key>``, e.g. ``data.beta: Expected `float` > 0.0, got 0``.
    """
    cls = get_partitioner(name)
    params = params or {}
    own = {f.name: params[f.name] for f in cls.fields() if f.name in params}
    try:
        return msgspec.convert(own, cls)
    except msgspec.ValidationError as exc:
        match = _AT.match(str(exc))
        if match is None:
            raise DsimError(f"{table} ({name}): {exc}") from None
        key, what = match["key"], match["what"]
        got = "" if ", got " in what else f", got {own.get(key)!r}"
        raise DsimError(f"{table}.{key}: {what}{got}") from None
    except ParamError as exc:
        raise DsimError(f"{table}.{exc.key}: {exc.reason}") from None


def _unpack(annotation: Any) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """(base type, constraints, documentation) of a field's annotation."""
    base, metas = annotation, ()
    if typing.get_origin(annotation) is Annotated:
        base, metas = annotation.__origin__, annotation.__metadata__
    constraints: dict[str, Any] = {}
    docs: dict[str, Any] = {}
    for meta in metas:
        if isinstance(meta, msgspec.Meta):
            for key in _META_KEYS:
                value = getattr(meta, key, None)
                if value is not None:
                    (docs if key in _DOC_KEYS else constraints)[key] = value
    return base, constraints, docs


def partition_params() -> dict[str, Param]:
    """Every partitioner's parameters: the partitioner keys of the flat [data] table.

    Each key maps to its annotation (base type plus `msgspec.Meta` with the bounds and a description
    prefixed by the partitioners using it, e.g. ``"kshard, shard: shards per node"``), its default
    and that description. TypeError when two partitioners declare one name differently, a name is
    a dataset-level key, or a parameter has no valid default.
    """
    seen: dict[str, tuple[Any, dict[str, Any], Any, str]] = {}  # key -> base, constraints, default, first user
    users: dict[str, list[tuple[str, str]]] = {}
    for cls in PARTITIONERS.values():
        for field in cls.fields():
            where = f"partitioner {cls.name!r} parameter {field.name!r}"
            if field.name in RESERVED:
                raise TypeError(f"{where}: the name is a dataset-level [data] key ({', '.join(sorted(RESERVED))})")
            if field.name in _BASE_ATTRS:
                raise TypeError(f"{where}: the name shadows Partitioner.{field.name}")
            if field.default is msgspec.NODEFAULT:
                raise TypeError(f"{where}: needs a plain default value")
            try:
                msgspec.convert(field.default, field.type)
            except msgspec.ValidationError as exc:
                raise TypeError(f"{where}: its default {field.default!r} is invalid: {exc}") from None
            base, constraints, docs = _unpack(field.type)
            if field.name in seen:
                first = seen[field.name]
                if (first[0], first[1], first[2]) != (base, constraints, field.default):
                    raise TypeError(
                        f"{where} is {base.__name__ if isinstance(base, type) else base} {constraints} = "
                        f"{field.default!r}, but partitioner {first[3]!r} declares it as {first[0]} "
                        f"{first[1]} = {first[2]!r}; a shared [data] key needs one type, bounds and default"
                    )
            else:
                seen[field.name] = (base, constraints, field.default, cls.name)
            users.setdefault(field.name, []).append((cls.name, docs.get("description", "")))
    out = {}
    for key, (base, constraints, default, _) in seen.items():
        by_text: dict[str, list[str]] = {}
        for user, text in users[key]:
            by_text.setdefault(text, []).append(user)
        description = "; ".join(f"{', '.join(u)}: {t}" if t else ", ".join(u) for t, u in by_text.items())
        annotation = Annotated[base, msgspec.Meta(**constraints, description=description)]
        out[key] = Param(annotation, default, description)
    return out


partition_params()  # a conflicting or badly declared parameter fails at import, not at launch


def _click_type(key: str, annotation: Any) -> tuple[Any, bool]:
    """(click type, is a boolean flag) for a parameter's annotation."""
    import click

    base, c, _ = _unpack(annotation)
    low, high = c.get("ge", c.get("gt")), c.get("le", c.get("lt"))
    bounded = dict(min=low, max=high, min_open="gt" in c, max_open="lt" in c)
    if base is bool:
        return None, True
    if base is int:
        return (click.IntRange(**bounded) if low is not None or high is not None else click.INT), False
    if base is float:
        return (click.FloatRange(**bounded) if low is not None or high is not None else click.FLOAT), False
    if base is str:
        return click.STRING, False
    if typing.get_origin(base) is Literal:
        return click.Choice([str(v) for v in typing.get_args(base)]), False
    raise TypeError(f"partitioner parameter {key!r}: no command-line type for {base!r}")


def click_options(*, defaults: bool = True) -> Callable[[F], F]:
    """A decorator adding one ``--flag`` per partitioner parameter (``min_size`` -> ``--min-size``).

    ``defaults=True`` (`dsim partition`): flags default to the parameters' defaults. ``defaults=False``
    (`dsim launch`): flags default to None, so only those given override the config; collect them
    with `pop_partition_params`.
    """
    import click

    options = []
    for key, param in partition_params().items():
        flag = "--" + key.replace("_", "-")
        click_type, is_flag = _click_type(key, param.annotation)
        default = param.default if defaults else None
        decls = [f"{flag}/--no-{flag[2:]}" if is_flag else flag, key]
        options.append(click.option(*decls, type=click_type, default=default, show_default=defaults,
                                    help=f"{param.description}."))

    def decorate(f: F) -> F:
        for option in reversed(options):  # click lists options in decorator order, top first
            f = option(f)
        return f

    return decorate


def pop_partition_params(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Remove the `click_options` values from a command's kwargs: the ones given (not None)."""
    out = {key: kwargs.pop(key) for key in partition_params() if key in kwargs}
    return {key: value for key, value in out.items() if value is not None}
