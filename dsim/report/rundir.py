"""A run directory read back into one typed object: what `dsim launch` wrote, nothing recomputed.

Every file but summary.json is optional, so a report also works on a failed run, an older run (no
`share` events, no message log) or a run whose server never wrote its synthetic set.
"""

from __future__ import annotations

import csv
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dsim.errors import DsimError
from dsim.report.messages import MessageLog, read_messages


@dataclass
class RunData:
    """One run: its summary, config, counters, node events and (when present) message log."""

    path: Path
    name: str
    summary: dict[str, Any]
    config: dict[str, Any]
    bandwidth: list[dict[str, Any]]
    by_kind: list[dict[str, Any]]
    events: dict[int, list[dict[str, Any]]]
    messages: MessageLog | None
    synthetic: dict[str, np.ndarray] | None = None
    roles: dict[int, str] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return str(self.summary.get("status", "unknown"))

    @property
    def algorithm(self) -> str:
        return str(self.summary.get("algorithm") or self.config.get("algorithm", "?"))

    @property
    def ranks(self) -> list[int]:
        return sorted(set(self.roles) | set(self.events))

    def of_kind(self, event: str) -> list[dict[str, Any]]:
        """Every node's events of one kind, in rank then time order."""
        return [e for rank in sorted(self.events) for e in self.events[rank] if e.get("event") == event]

    def shares(self) -> dict[int, dict[str, int]] | None:
        """Per-class train label counts of every node with data; None when the run did not record them."""
        found = {int(e["rank"]): {str(k): int(v) for k, v in e.get("labels", {}).items()}
                 for e in self.of_kind("share")}
        return found or None

    def errors(self) -> list[dict[str, Any]]:
        return self.of_kind("error")


def flat_config(cfg: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested TOML tables as dotted keys (`dm.ipc`), the form `--set` takes."""
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flat_config(value, name + "."))
        else:
            out[name] = value
    return out


def is_run_dir(path: Path) -> bool:
    return (path / "summary.json").is_file()


def expand(paths: list[Path]) -> list[Path]:
    """Run directories named by the user; a folder without summary.json whose subfolders have one (a
    sweep, or any parent of runs) stands for those runs, in a sweep's grid order or else by name.
    Anything else is refused."""
    runs: list[Path] = []
    for path in paths:
        if not path.is_dir():
            raise DsimError(f"{path} is not a directory")
        if is_run_dir(path):
            runs.append(path)
            continue
        children = sorted((p for p in path.iterdir() if p.is_dir() and is_run_dir(p)), key=_grid_order(path))
        if not children:
            raise DsimError(f"{path} is not a run directory (no summary.json in it or in its subfolders)")
        runs.extend(children)
    if len(set(p.resolve() for p in runs)) != len(runs):
        raise DsimError("the same run directory is named twice")
    return runs


def _grid_order(parent: Path):
    """Sort key of a folder's runs: a sweep's grid order (its sweep.csv `name` column), then by name."""
    order: dict[str, int] = {}
    table = parent / "sweep.csv"
    if table.is_file():
        order = {row.get("name", ""): i for i, row in enumerate(_read_csv(table))}
    return lambda p: (order.get(p.name, len(order)), p.name)


def load_run(path: Path, name: str | None = None) -> RunData:
    """Read a run directory; a malformed summary or config is one DsimError naming the file."""
    summary = _read_json(path / "summary.json")
    config = {}
    if (path / "config.toml").is_file():
        try:
            config = tomllib.loads((path / "config.toml").read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise DsimError(f"{path / 'config.toml'} is not valid TOML: {exc}") from exc
    bandwidth = [_numbers(r) for r in _read_csv(path / "bandwidth.csv")]
    by_kind = [_numbers(r) for r in _read_csv(path / "bandwidth_by_kind.csv")]
    events = _read_events(path / "nodes")
    roles = {int(r["rank"]): str(r["role"]) for r in bandwidth}
    for rank, evs in events.items():
        start = next((e for e in evs if e.get("event") == "start"), None)
        if start is not None and "role" in start:
            roles.setdefault(rank, str(start["role"]))
    return RunData(path=path, name=name or path.name, summary=summary, config=config, bandwidth=bandwidth,
                   by_kind=by_kind, events=events, messages=read_messages(path),
                   synthetic=_read_synthetic(path / "synthetic.npz"), roles=roles)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DsimError(f"cannot read {path}: {exc}") from exc
    if not isinstance(value, dict):
        raise DsimError(f"{path} does not hold a JSON object")
    return value


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _numbers(row: dict[str, str]) -> dict[str, Any]:
    """CSV cells as ints or floats where they are numbers (empty counters of a silent node stay 0)."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if key in ("role", "host", "kind"):
            out[key] = value
            continue
        try:
            out[key] = int(value)
        except (TypeError, ValueError):
            try:
                out[key] = float(value)
            except (TypeError, ValueError):
                out[key] = 0 if value in ("", None) else value
    return out


def _read_events(folder: Path) -> dict[int, list[dict[str, Any]]]:
    """nodes/<rank>.jsonl; a line cut short by a killed process is skipped, not fatal."""
    events: dict[int, list[dict[str, Any]]] = {}
    if not folder.is_dir():
        return events
    for file in folder.glob("*.jsonl"):
        if not file.stem.isdigit():
            continue
        rows = []
        for line in file.read_text(errors="replace").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
        events[int(file.stem)] = rows
    return dict(sorted(events.items()))


def _read_synthetic(path: Path) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError):
        return None
