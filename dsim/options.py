"""Typed option tables: one declaration per key (type, default, range or choices, one-line doc).

Every table of the configuration, the core, `[net]`, `[graph]`, `[data]` and each program's own, is
an `Options` struct: a frozen msgspec Struct whose fields are annotated with `msgspec.Meta`
(`ge`/`gt`/`le`/`lt` bounds and a `description`). Conversion from TOML/CLI values checks everything
at once and turns msgspec's errors into one line that names the dotted key, so the launcher can refuse
a bad value before it forks anything. Floor module: imports nothing from dsim but errors.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
import tomli_w

from dsim.errors import DsimError

__all__ = ["Options", "Field", "convert", "fields", "to_dict", "commented_toml"]

T = TypeVar("T", bound="Options")


class Options(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Base of every option table: keyword-only, immutable, unknown keys refused."""


@dataclass(frozen=True)
class Field:
    """One declared key, as `dsim config` prints it."""

    name: str
    default: Any
    doc: str
    table: type[Options] | None  # the nested table's type when this key is a table


_ERROR = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_UNKNOWN = re.compile(r"Object contains unknown field `(?P<key>[^`]+)`")


def _dotted(prefix: str, path: str) -> str:
    parts = [p for p in re.split(r"\.|\[", path) if p]
    parts = [p.rstrip("]") for p in parts]
    return ".".join(x for x in (prefix, *parts) if x)


def _lookup(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if isinstance(data, Mapping) and part in data:
            data = data[part]
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return None
    return data


def _table_at(cls: type[Options], path: str) -> type[Options] | None:
    for part in (p for p in path.split(".") if p):
        sub = {f.name: f.table for f in fields(cls)}.get(part)
        if sub is None:
            return None
        cls = sub
    return cls


def convert(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Build a table from plain values; any bad key or value is a one-line DsimError naming its key."""
    try:
        return msgspec.convert(dict(data), cls)
    except msgspec.ValidationError as exc:
        raise DsimError(_explain(cls, data, str(exc), prefix)) from None


def _explain(cls: type[Options], data: Mapping[str, Any], text: str, prefix: str) -> str:
    match = _ERROR.match(text)
    what, path = match.group("what"), (match.group("path") or "")
    unknown = _UNKNOWN.match(what)
    if unknown:
        table = _table_at(cls, path.lstrip("."))
        key = _dotted(prefix, f"{path}.{unknown.group('key')}")
        known = ", ".join(f.name for f in fields(table)) if table else ""
        return f"unknown config key '{key}'" + (f" (known: {known})" if known else "")
    key = _dotted(prefix, path)
    if not key:
        return what
    got = _lookup(data, key[len(prefix) + 1:] if prefix else key)
    if what.startswith("Expected `object`"):
        return f"config key '{key}' is a table; set its keys, e.g. {key}.<name>=..."
    what = what.replace("Expected", "expects").replace("`", "")
    if what.startswith("Invalid enum value"):
        table = _table_at(cls, ".".join(path.lstrip(".").split(".")[:-1]))
        choices = _choices(table, key.rsplit(".", 1)[-1]) if table else ()
        return f"config key '{key}' must be one of {', '.join(map(str, choices))}, got {got!r}"
    if what.startswith("expects"):
        return f"config key '{key}' {what.split(', got')[0]}, got {got!r}"
    return f"in [{key}]: {what}"  # a check across keys of one table (its __post_init__)


def _choices(cls: type[Options], name: str) -> tuple[Any, ...]:
    info = msgspec.inspect.type_info(cls)
    for f in info.fields:
        if f.name == name:
            t = f.type.type if isinstance(f.type, msgspec.inspect.Metadata) else f.type
            return tuple(getattr(t, "values", ()))
    return ()


def fields(cls: type[Options]) -> list[Field]:
    """The declared keys of a table in declaration order, with their defaults and docs."""
    out = []
    for f in msgspec.inspect.type_info(cls).fields:
        doc, t = "", f.type
        if isinstance(t, msgspec.inspect.Metadata):
            doc = (t.extra_json_schema or {}).get("description", "")
            t = t.type
        table = t.cls if isinstance(t, msgspec.inspect.StructType) else None
        default = f.default if f.default is not msgspec.NODEFAULT else (
            f.default_factory() if f.default_factory is not msgspec.NODEFAULT else None)
        if not doc and table is not None:
            doc = next(iter((table.__doc__ or "").strip().splitlines()), "")
        out.append(Field(f.name, default, doc, table))
    return out


def to_dict(options: Options) -> dict[str, Any]:
    """Plain nested values (what config.toml holds and the fingerprint hashes); sequences become lists,
    as TOML and msgpack give them back, so a config compares equal to itself after a round trip."""
    return _lists(msgspec.to_builtins(options))


def _lists(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_lists(v) for v in value]
    return value


def _toml_value(value: Any) -> str:
    """One value as TOML; a mapping as an inline table (a key's value, never a [table] of its own)."""
    if isinstance(value, Mapping):
        items = ", ".join(f"{_toml_value(str(k))} = {_toml_value(v)}" for k, v in value.items())
        return f"{{ {items} }}" if items else "{}"
    return tomli_w.dumps({"v": value}).split("=", 1)[1].strip()


def _lines(options: Options, name: str) -> Iterator[str]:
    nested = []
    for f in fields(type(options)):
        value = getattr(options, f.name)
        if f.table is not None:
            nested.append((f, value))
            continue
        if f.doc:
            yield f"# {f.doc}"
        yield f"{f.name} = {_toml_value(to_dict(value) if isinstance(value, Options) else value)}"
    for f, value in nested:
        dotted = f"{name}.{f.name}" if name else f.name
        yield ""
        if f.doc:
            yield f"# {f.doc}"
        yield f"[{dotted}]"
        yield from _lines(value, dotted)


def commented_toml(options: Options) -> str:
    """The table as TOML, each key preceded by its doc: how a user discovers what can be set."""
    return "\n".join(_lines(options, "")) + "\n"
