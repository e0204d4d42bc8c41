"""The resolved configuration: defaults < config file < CLI flags < --set, validated against the defaults.

Every option lives in one nested dict whose shape is fixed by DEFAULTS (plus the chosen program's own
table). The resolved dict is what is written to ``config.toml`` and what the start-up fingerprint hashes,
so two machines can only run together when they resolved the same experiment.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import tomli_w

from dsim.errors import DsimError

DATA_DEFAULTS: dict[str, Any] = {
    "dataset": "digits",
    "data_dir": "",
    "download": False,
    "partition": "iid",
    "shards": 2,
    "beta": 0.5,
    "min_size": 10,
    "class_floor": 0,
    "val_fraction": 0.1,
}

DEFAULTS: dict[str, Any] = {
    "nodes": 10,
    "topology": "star",
    "algorithm": "collabdm",
    "seed": 0,
    "rounds": 10,
    "out": "",
    "nodes_per_process": 1,
    "timeout": 120.0,
    "graph": {"degree": 4, "k": 4, "rewire": 0.1, "p": 0.0, "rows": 0},
    "net": {
        "host": "127.0.0.1",
        "ports": "",
        "master_port": 29400,
        "max_message_mb": 512.0,
        "heartbeat": 0.5,
        "heartbeat_timeout": 60.0,
        "start_timeout": 120.0,
        "event_loop": "auto",  # node processes: auto (uvloop when installed) | uvloop | asyncio
    },
    "data": DATA_DEFAULTS,
}

EVENT_LOOPS = ("auto", "uvloop", "asyncio")

# Keys that legitimately differ between machines of one run; left out of the fingerprint.
MACHINE_LOCAL = ("out", "data.data_dir", "data.download")


def parse_value(text: str) -> Any:
    """Parse a --set value as a TOML value (numbers, booleans, quoted strings, arrays); else a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Check a value against the default's type; ints are accepted where floats are expected."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
    elif isinstance(default, list):
        if isinstance(value, list):
            return value
    elif isinstance(default, dict):
        raise DsimError(f"config key '{key}' is a table; set its keys, e.g. {key}.<name>=...")
    else:
        return value
    raise DsimError(f"config key '{key}' expects {type(default).__name__}, got {value!r}")


def merge(base: dict[str, Any], update: Mapping[str, Any], prefix: str = "") -> None:
    """Merge update into base in place, refusing keys that base does not define."""
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if key not in base:
            raise DsimError(f"unknown config key '{dotted}' (known: {', '.join(sorted(base))})")
        if isinstance(base[key], dict):
            if not isinstance(value, Mapping):
                raise DsimError(f"config key '{dotted}' is a table, got {value!r}")
            merge(base[key], value, prefix=f"{dotted}.")
        else:
            base[key] = _coerce(dotted, value, base[key])


def set_dotted(cfg: dict[str, Any], assignment: str) -> None:
    """Apply one ``key.sub=value`` assignment."""
    if "=" not in assignment:
        raise DsimError(f"--set expects key=value, got '{assignment}'")
    key, text = assignment.split("=", 1)
    parts = key.strip().split(".")
    update: dict[str, Any] = {parts[-1]: parse_value(text.strip())}
    for part in reversed(parts[:-1]):
        update = {part: update}
    merge(cfg, update)


def load_toml(path: str | Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise DsimError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise DsimError(f"config file {path} is not valid TOML: {exc}") from None


def resolve(
    file: str | Path | None = None,
    flags: Mapping[str, Any] | None = None,
    sets: Iterable[str] = (),
) -> dict[str, Any]:
    """Build the resolved config. The program's own table joins once the algorithm is known."""
    from dsim.programs import load_program  # the program decides its table

    cfg = copy.deepcopy(DEFAULTS)
    file_cfg = load_toml(file) if file else {}
    sets = list(sets)
    algorithm = _pick_algorithm(file_cfg, flags or {}, sets)
    cfg["algorithm"] = algorithm
    program = load_program(algorithm)
    if program.defaults:
        cfg[program.options_table] = copy.deepcopy(dict(program.defaults))
    merge(cfg, file_cfg)
    merge(cfg, {k: v for k, v in (flags or {}).items() if v is not None})
    for assignment in sets:
        set_dotted(cfg, assignment)
    validate(cfg)
    return cfg


def _pick_algorithm(file_cfg: Mapping[str, Any], flags: Mapping[str, Any], sets: list[str]) -> str:
    algorithm = DEFAULTS["algorithm"]
    algorithm = file_cfg.get("algorithm", algorithm)
    algorithm = flags.get("algorithm") or algorithm
    for assignment in sets:
        if assignment.split("=", 1)[0].strip() == "algorithm":
            algorithm = str(parse_value(assignment.split("=", 1)[1].strip()))
    return str(algorithm)


def validate(cfg: Mapping[str, Any]) -> None:
    """Range checks with one-line messages; the topology and data layers check their own tables."""
    if cfg["nodes"] < 1:
        raise DsimError(f"--nodes must be at least 1, got {cfg['nodes']}")
    if cfg["nodes_per_process"] < 1:
        raise DsimError(f"--nodes-per-process must be at least 1, got {cfg['nodes_per_process']}")
    if cfg["timeout"] <= 0:
        raise DsimError("timeout must be positive")
    if cfg["rounds"] < 0:
        raise DsimError("rounds must be non-negative")
    net = cfg["net"]
    if net["max_message_mb"] <= 0:
        raise DsimError("net.max_message_mb must be positive")
    if net["heartbeat"] <= 0 or net["heartbeat_timeout"] <= net["heartbeat"]:
        raise DsimError("net.heartbeat must be positive and smaller than net.heartbeat_timeout")
    if net["event_loop"] not in EVENT_LOOPS:
        raise DsimError(f"net.event_loop must be one of {', '.join(EVENT_LOOPS)}, got {net['event_loop']!r}")
    if net["event_loop"] == "uvloop" and importlib.util.find_spec("uvloop") is None:
        raise DsimError("net.event_loop = 'uvloop' but uvloop is not installed (pip install uvloop)")
    parse_port_range(net["ports"])


def parse_port_range(text: str) -> tuple[int, int] | None:
    """'' means ports chosen by the OS; 'LO-HI' restricts node sockets to that range."""
    if not text:
        return None
    try:
        lo, hi = (int(x) for x in text.split("-", 1))
    except ValueError:
        raise DsimError(f"net.ports must look like LO-HI, got '{text}'") from None
    if not 1024 <= lo <= hi <= 65535:
        raise DsimError(f"net.ports range {text} must lie within 1024-65535 with LO <= HI")
    return lo, hi


def fingerprint_view(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The config without machine-local keys: what must agree across machines."""
    view = copy.deepcopy(dict(cfg))
    for dotted in MACHINE_LOCAL:
        *parents, leaf = dotted.split(".")
        node = view
        for part in parents:
            node = node.get(part, {})
        node.pop(leaf, None)
    return view


def fingerprint(cfg: Mapping[str, Any], graph_hash: str) -> str:
    blob = json.dumps({"config": fingerprint_view(cfg), "graph": graph_hash}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def differences(mine: Mapping[str, Any], theirs: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Human-readable list of keys whose values differ, for the refusal message."""
    out = []
    for key in sorted(set(mine) | set(theirs)):
        a, b = mine.get(key, "<missing>"), theirs.get(key, "<missing>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}={b!r} (here {a!r})")
    return out


def to_toml(cfg: Mapping[str, Any]) -> str:
    return tomli_w.dumps(dict(cfg))
