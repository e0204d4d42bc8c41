"""Sweeps: `dsim launch --sweep KEY=V1,V2,...` runs the product of its axes, one run after another.

The parent directory holds one normal run directory per grid point, named from the point's values
(`dm.ipc=10,seed=1`), plus `sweep.json` (the definition: axes, points and their config fingerprints,
what a resume is checked against) and `sweep.csv` (one row per point: its status, swept values, wall
time and scalar results, rewritten atomically after every run). So `dsim report PARENT` sees a folder
of run directories, and a grid interrupted overnight is resumed by the same command: a point whose
summary.json says ok with the same config fingerprint is skipped; any other is run again from scratch.

Every point is resolved and planned (graph, links, churn, device, dataset files) before the first
run starts, so a bad value anywhere in the grid is one line and exit 2 with nothing run. The points
run in this process through `dsim.launch.launch`, as a single `dsim launch` would: the dataset is
loaded once and each run forks its workers afresh. A failed point does not stop the sweep (the others
go on; the exit code is 1 at the end); Ctrl-C stops it at the current run (exit 130), keeping every
finished run.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import itertools
import json
import os
import re
import shutil
import signal
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from dsim.config import Config, differences, fingerprint, fingerprint_view, resolve
from dsim.console import Console
from dsim.errors import DsimError
from dsim.options import to_dict

DEFINITION = "sweep.json"
TABLE = "sweep.csv"
UNSWEPT = ("out",)  # keys a sweep may not vary: the parent decides where each point runs
_SAFE = re.compile(r"[^A-Za-z0-9._+-]")
_MAX_NAME = 120  # directory names stay far below the 255-byte limit of file systems


@dataclass(frozen=True)
class Axis:
    """One `--sweep KEY=V1,V2,...`: a config key and its values as `--set` texts."""

    key: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class Point:
    """One grid point: its directory name and, per swept key, the `--set` text of its value."""

    name: str
    values: tuple[tuple[str, str], ...]

    @property
    def sets(self) -> list[str]:
        return [f"{key}={text}" for key, text in self.values]


@dataclass(frozen=True)
class Planned:
    """A point resolved and checked: its config (with `out` = its run directory) and fingerprint."""

    point: Point
    cfg: Config
    fingerprint: str


def split_values(text: str) -> list[str]:
    """V1,V2,... split on the commas outside quotes and brackets, so `'a,b'` and `[1,2]` stay one value."""
    values, current, depth, quote = [], [], 0, ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            values.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    values.append("".join(current).strip())
    return values


def parse_axes(texts: Iterable[str]) -> list[Axis]:
    """`--sweep` texts as axes, in the order given; a malformed one is a one-line DsimError."""
    axes: list[Axis] = []
    for text in texts:
        key, sep, raw = text.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise DsimError(f"--sweep expects KEY=V1,V2,..., got '{text}'")
        if key in UNSWEPT:
            raise DsimError(f"--sweep cannot vary '{key}': each point runs in its own directory under --out")
        if any(a.key == key for a in axes):
            raise DsimError(f"--sweep names '{key}' twice; give all its values in one --sweep {key}=V1,V2,...")
        values = split_values(raw)
        if any(not v for v in values):
            raise DsimError(f"--sweep {key} has an empty value in '{raw}'")
        if len(set(values)) != len(values):
            raise DsimError(f"--sweep {key} repeats a value in '{raw}'")
        axes.append(Axis(key, tuple(values)))
    return axes


def _label(text: str) -> str:
    """A value as it appears in a directory name: quotes dropped, anything unsafe replaced by '_'."""
    return _SAFE.sub("_", text.replace("'", "").replace('"', "")) or "_"


def point_name(values: Iterable[tuple[str, str]]) -> str:
    """`key=value,key=value` with filesystem-safe values; a very long one is cut and keeps a hash."""
    values = list(values)
    name = ",".join(f"{key}={_label(text)}" for key, text in values)
    if len(name) > _MAX_NAME:  # the hash of the full texts keeps cut names apart
        digest = hashlib.sha256(json.dumps(values).encode()).hexdigest()[:8]
        name = f"{name[:_MAX_NAME - 9]}-{digest}"
    return name


def expand(axes: list[Axis]) -> list[Point]:
    """The product of the axes: the first axis varies slowest, each in the order its values were given."""
    points = []
    names: dict[str, Point] = {}
    for combo in itertools.product(*[[(a.key, v) for v in a.values] for a in axes]):
        point = Point(point_name(combo), tuple(combo))
        if point.name in names:
            raise DsimError(f"--sweep values {' '.join(names[point.name].sets)} and {' '.join(point.sets)} "
                            f"give the same directory name {point.name}")
        names[point.name] = point
        points.append(point)
    return points


def plan_sweep(axes: list[Axis], config_file: str | None, flags: Mapping[str, Any], sets: Iterable[str]) \
        -> tuple[Path, list[Planned]]:
    """Resolve and plan every point before anything runs; returns (parent, points). A bad value is one
    line naming the point; two points that resolve to the same experiment are refused."""
    from dsim.launch import plan_launch
    from dsim.topologies import graph_hash

    planned: list[tuple[Point, Config, str]] = []
    sets = list(sets)
    for point in expand(axes):
        try:
            cfg = resolve(config_file, flags, [*sets, *point.sets])
            plan = plan_launch(cfg)
        except DsimError as exc:
            raise DsimError(f"sweep point {point.name}: {exc}") from None
        planned.append((point, cfg, fingerprint(cfg, graph_hash(plan.graph))))
        if plan.program.uses_data:
            _check_data(point, cfg)
    seen: dict[str, Point] = {}
    for point, _, fp in planned:
        if fp in seen:
            raise DsimError(f"sweep points {seen[fp].name} and {point.name} resolve to the same experiment")
        seen[fp] = point
    first = planned[0][1]
    parent = Path(first.out) if first.out else _default_parent({cfg.algorithm for _, cfg, _ in planned})
    return parent, [Planned(point, msgspec.structs.replace(cfg, out=str(parent / point.name)), fp)
                    for point, cfg, fp in planned]


def _check_data(point: Point, cfg: Config) -> None:
    """The dataset files a point needs (loads are cached per process, so the runs reuse them)."""
    from dsim.data import load_dataset

    try:
        load_dataset(cfg.data.dataset, cfg.data.data_dir or None, download=cfg.data.download, seed=cfg.seed)
    except DsimError as exc:
        raise DsimError(f"sweep point {point.name}: {exc}") from None


def _default_parent(algorithms: set[str]) -> Path:
    """runs/<UTC time>-sweep-<algorithm>, one not taken yet (the directory is made when the sweep starts)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    tag = f"sweep-{next(iter(algorithms))}" if len(algorithms) == 1 else "sweep"
    for attempt in itertools.count():
        path = Path("runs") / f"{stamp}-{tag}{f'-{attempt}' if attempt else ''}"
        if not path.exists():
            return path
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------- resume


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def check_parent(parent: Path, axes: list[Axis], points: list[Planned]) -> None:
    """Refuse a parent that holds something else than this sweep. The same sweep may grow (new values
    on its axes add points); its keys, its points' configs and the base config must stay the same."""
    if not parent.exists():
        return
    if not parent.is_dir():
        raise DsimError(f"--out {parent} is a file, not a sweep directory")
    if (parent / "summary.json").exists():
        raise DsimError(f"--out {parent} holds a single run (summary.json), not a sweep; choose another --out")
    recorded = _read_json(parent / DEFINITION)
    if recorded is None:
        if any(parent.iterdir()):
            raise DsimError(f"--out {parent} exists and holds no {DEFINITION}: not a sweep's directory; "
                            f"choose another --out")
        return
    keys = [a.key for a in axes]
    if recorded.get("keys") != keys:
        raise DsimError(f"--out {parent} holds a sweep over {', '.join(recorded.get('keys') or [])}, not "
                        f"{', '.join(keys)}; choose another --out")
    mine = {p.point.name: p for p in points}
    for old in recorded.get("points", []):
        new = mine.get(old["name"])
        if new is None:
            raise DsimError(f"--out {parent} holds a sweep with point {old['name']}, which this grid lacks; "
                            f"a resumed sweep may add values, not drop them; choose another --out")
        if new.fingerprint != old["fingerprint"]:
            raise DsimError(f"--out {parent} holds this sweep with another config at {old['name']}: "
                            f"{_what_differs(parent / old['name'], new.cfg)}; choose another --out")


def _what_differs(run_dir: Path, cfg: Config) -> str:
    """The keys by which the config a point ran with differs from this one's, from its config.toml."""
    try:
        theirs = fingerprint_view(resolve(str(run_dir / "config.toml")))
    except DsimError:
        return "its config or graph differs"
    diffs = differences(fingerprint_view(cfg), theirs)
    return ", ".join(diffs[:4]) + (", ..." if len(diffs) > 4 else "") if diffs else "its graph differs"


def decide(planned: Planned) -> tuple[str, dict[str, Any] | None]:
    """What to do with a point: ("skip", summary) when it finished ok with this config, ("rerun", summary
    or None) when its directory holds a failed, interrupted or unfinished run, ("run", None) when new."""
    run_dir = Path(planned.cfg.out)
    if not run_dir.exists():
        return "run", None
    if not run_dir.is_dir():
        raise DsimError(f"{run_dir} is a file where the sweep's point {planned.point.name} runs; move it away")
    summary = _read_json(run_dir / "summary.json")
    if summary and summary.get("status") == "ok":
        if summary.get("config_fingerprint") != planned.fingerprint:
            raise DsimError(f"{run_dir} holds a finished run of another config (fingerprint "
                            f"{summary.get('config_fingerprint')}, this point's {planned.fingerprint}); move it away")
        return "skip", summary
    return "rerun", summary


# ---------------------------------------------------------------------------------------------- tables


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_definition(parent: Path, axes: list[Axis], points: list[Planned]) -> None:
    definition = {
        "keys": [a.key for a in axes],
        "values": {a.key: list(a.values) for a in axes},
        "points": [{"name": p.point.name, "sets": p.point.sets, "fingerprint": p.fingerprint} for p in points],
    }
    _atomic_write(parent / DEFINITION, json.dumps(definition, indent=2) + "\n")


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def flatten_results(results: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A summary's scalar results as columns; nested tables become `a.b`. Per-node tables (keyed by
    rank) and lists are left to summary.json: they would be one column per node."""
    out: dict[str, Any] = {}
    for key, value in results.items():
        if key == "per_node":
            continue
        if _scalar(value):
            out[prefix + key] = value
        elif isinstance(value, Mapping) and value and not all(str(k).isdigit() for k in value):
            out.update(flatten_results(value, f"{prefix}{key}."))
    return out


def _value_at(cfg: Config, key: str) -> Any:
    node: Any = to_dict(cfg)
    for part in key.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node if _scalar(node) else json.dumps(node)


def node_bytes_mean(run_dir: Path) -> float | None:
    """Mean bytes sent + received per node other than the server, from bandwidth.csv: the communication
    cost the comparisons plot accuracy against (None when the run wrote no counters)."""
    try:
        with open(run_dir / "bandwidth.csv", newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if r["role"] != "server" and r["bytes_sent"] != ""]
    except OSError:
        return None
    return sum(int(r["bytes_sent"]) + int(r["bytes_recv"]) for r in rows) / len(rows) if rows else None


def row_of(planned: Planned, keys: list[str], status: str, summary: Mapping[str, Any] | None = None,
           reason: str = "") -> dict[str, Any]:
    """One sweep.csv row: the point's name, status, swept values, wall time, bytes per node, results,
    run id and reason."""
    row: dict[str, Any] = {"name": planned.point.name, "status": status}
    row.update({key: _value_at(planned.cfg, key) for key in keys})
    if summary:
        row["status"] = summary.get("status", status)
        row["wall_time_s"] = summary.get("wall_time_s")
        row["node_bytes_mean"] = node_bytes_mean(Path(planned.cfg.out))
        for col, value in flatten_results(summary.get("results") or {}).items():
            row[f"results.{col}" if col in row or col in ("run_id", "reason") else col] = value
        row["run_id"] = summary.get("run_id")
        failures = summary.get("failures") or []
        reason = reason or (failures[0].get("reason", "") if failures else "")
    row["reason"] = reason
    return row


def write_table(parent: Path, rows: list[dict[str, Any]]) -> None:
    """sweep.csv, every point in grid order; columns are the union of the rows', first seen first."""
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns and c not in ("run_id", "reason")]
    columns += ["run_id", "reason"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, restval="")
    writer.writeheader()
    writer.writerows(rows)
    _atomic_write(parent / TABLE, buf.getvalue())


# ---------------------------------------------------------------------------------------------- running


class _CtrlC:
    """SIGINT raises KeyboardInterrupt as usual and is also remembered: one swallowed on the way (an
    exception in a finalizer is only printed) still stops the sweep once the current run returns."""

    def __init__(self) -> None:
        self.pressed = False

    def __call__(self, signum: int, frame: Any) -> None:
        self.pressed = True
        raise KeyboardInterrupt


def run_sweep(axes: list[Axis], parent: Path, points: list[Planned], quiet: bool = False) -> int:
    """Run the points not yet done, one after another; returns the exit code (0, 1 if any point
    failed, 130 when interrupted)."""
    ctrl_c = _CtrlC()
    previous = signal.signal(signal.SIGINT, ctrl_c)
    try:
        check_parent(parent, axes, points)
        parent.mkdir(parents=True, exist_ok=True)
        with _only_sweep_in(parent):
            return _run(axes, parent, points, Console(quiet=quiet), ctrl_c)
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _only_sweep_in(parent: Path) -> Iterator[None]:
    """An exclusive lock on the parent directory for the sweep's lifetime: a second sweep started into
    the same --out (the same command twice, by mistake) is refused instead of running points twice."""
    fd = os.open(parent, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DsimError(f"another sweep is running in {parent}; wait for it or choose another --out") from None
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _run(axes: list[Axis], parent: Path, points: list[Planned], console: Console, ctrl_c: _CtrlC) -> int:
    from dsim.launch import launch

    keys = [a.key for a in axes]
    check_parent(parent, axes, points)  # again, now that no other sweep can write here
    decisions = [decide(p) for p in points]  # every refusal before the first run
    write_definition(parent, axes, points)
    rows = [row_of(p, keys, "ok" if what == "skip" else "pending", summary if what == "skip" else None)
            for p, (what, summary) in zip(points, decisions, strict=True)]
    write_table(parent, rows)
    todo = sum(what != "skip" for what, _ in decisions)
    console.say(f"dsim: sweep of {len(points)} runs ({todo} to run) in {parent}; rerun this command with "
                f"--out {parent} to resume")
    for i, (p, (what, summary)) in enumerate(zip(points, decisions, strict=True)):
        tag = f"dsim: sweep [{i + 1}/{len(points)}] {p.point.name}"
        if what == "skip":
            console.say(f"{tag}: done before (run {summary.get('run_id')}), skipped")
            continue
        run_dir = Path(p.cfg.out)
        if what == "rerun":
            console.say(f"{tag}: rerun from scratch (was {(summary or {}).get('status', 'unfinished')})")
            shutil.rmtree(run_dir)
        else:
            console.say(tag)
        signal.signal(signal.SIGINT, ctrl_c)  # each run's coordinator hands SIGINT back to Python's default
        reason = ""
        try:
            code, _ = launch(p.cfg, quiet=console.quiet)
        except DsimError as exc:
            console.error(f"dsim: error: sweep point {p.point.name}: {exc}")
            code, reason = exc.exit_code, str(exc)
        except KeyboardInterrupt:
            code = 130
        summary = _read_json(run_dir / "summary.json")
        status = {0: "ok", 1: "failed", 130: "interrupted"}.get(code, "refused")
        rows[i] = row_of(p, keys, status, summary, reason)
        write_table(parent, rows)
        if code == 130 or ctrl_c.pressed:
            console.error(f"dsim: sweep interrupted at {p.point.name}; finished runs are kept; resume with "
                          f"the same command and --out {parent}")
            return 130
    bad = [r["name"] for r in rows if r["status"] != "ok"]
    if bad:
        console.error(f"dsim: error: sweep finished with {len(bad)} of {len(rows)} runs not ok "
                      f"({', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}); table in {parent / TABLE}")
        return 1
    console.say(f"dsim: sweep finished: {len(rows)} runs ok, {len(rows) - todo} of them done before; table in "
                f"{parent / TABLE}; compare with: dsim report {parent}")
    return 0


def dry_run(parent: Path, axes: list[Axis], points: list[Planned]) -> list[str]:
    """What a sweep would do, point by point, without starting or writing anything."""
    check_parent(parent, axes, points)
    lines = [f"dsim: dry run of a sweep of {len(points)} runs in {parent}; nothing is started"]
    for p in points:
        what, summary = decide(p)
        note = {"skip": f"done before (run {(summary or {}).get('run_id')}), skipped",
                "rerun": f"rerun (was {(summary or {}).get('status', 'unfinished')})", "run": "to run"}[what]
        lines.append(f"  {p.point.name}: {p.cfg.algorithm}, config fingerprint {p.fingerprint}; {note}")
    return lines
