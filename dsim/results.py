"""The run directory: config.toml, nodes/<rank>.jsonl, bandwidth CSVs, summary.json and the closing table."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

from dsim.config import to_toml
from dsim.console import fmt_bytes
from dsim.errors import DsimError
from dsim.nodelog import json_safe

BANDWIDTH_COLUMNS = ["rank", "role", "host", "bytes_sent", "bytes_recv", "msgs_sent", "msgs_recv", "bytes_relayed"]
COUNTERS = ["bytes_sent", "bytes_recv", "msgs_sent", "msgs_recv"]


def make_run_dir(out: str, algorithm: str, machine: int = 0) -> Path:
    """`out` if given (refused if it already holds a finished run), else runs/<UTC time>-<algorithm>."""
    if out:
        path = Path(out)
        if (path / "summary.json").exists():
            raise DsimError(f"{path} already holds a run (summary.json); choose another --out")
        path.mkdir(parents=True, exist_ok=True)
        return path
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    suffix = f"-m{machine}" if machine else ""
    for attempt in range(1000):
        path = Path("runs") / f"{stamp}-{algorithm}{suffix}{'' if attempt == 0 else f'-{attempt}'}"
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise DsimError("could not create a fresh run directory under runs/")


def write_config(run_dir: Path, cfg: dict[str, Any]) -> None:
    (run_dir / "config.toml").write_text(to_toml(cfg))


def bandwidth_rows(traffic: dict[int, dict[str, Any]], roles: dict[int, str],
                   hosts: dict[int, str]) -> list[dict[str, Any]]:
    """One row per node of the graph; nodes whose worker never reported keep empty counters."""
    rows = []
    for rank in sorted(roles):
        stats = traffic.get(rank, {})
        row = {"rank": rank, "role": roles[rank], "host": hosts.get(rank, "")}
        row.update({k: stats.get(k, "") for k in BANDWIDTH_COLUMNS[3:]})
        row["by_kind"] = stats.get("by_kind", {})
        rows.append(row)
    return rows


def write_bandwidth(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    with open(run_dir / "bandwidth.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, BANDWIDTH_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    with open(run_dir / "bandwidth_by_kind.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["rank", "role", "host", "kind", *COUNTERS])
        for row in rows:
            for kind, t in sorted(row["by_kind"].items()):
                writer.writerow([row["rank"], row["role"], row["host"], kind, *(t[k] for k in COUNTERS)])


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    tmp = run_dir / "summary.json.tmp"
    tmp.write_text(json.dumps(json_safe(summary), indent=2, sort_keys=False) + "\n")
    tmp.replace(run_dir / "summary.json")


def closing_table(rows: list[dict[str, Any]], limit: int = 24) -> str:
    """Per-node bandwidth, with a totals line; long runs show the first and last rows."""
    header = f"{'rank':>5} {'role':<8} {'host':<15} {'sent':>10} {'recv':>10} {'msgs out':>9} {'msgs in':>9}"
    lines = [header]
    shown = rows if len(rows) <= limit else rows[: limit // 2] + [None] + rows[-limit // 2:]
    for row in shown:
        if row is None:
            lines.append(f"{'...':>5} ({len(rows) - limit} more nodes)")
            continue
        if row["bytes_sent"] == "":
            lines.append(f"{row['rank']:>5} {row['role']:<8} {row['host']:<15} {'(no report)':>10}")
            continue
        lines.append(f"{row['rank']:>5} {row['role']:<8} {row['host']:<15} {fmt_bytes(row['bytes_sent']):>10} "
                     f"{fmt_bytes(row['bytes_recv']):>10} {row['msgs_sent']:>9} {row['msgs_recv']:>9}")
    reported = [r for r in rows if r["bytes_sent"] != ""]
    sent = sum(r["bytes_sent"] for r in reported)
    recv = sum(r["bytes_recv"] for r in reported)
    lines.append(f"{'all':>5} {'':<8} {'':<15} {fmt_bytes(sent):>10} {fmt_bytes(recv):>10} "
                 f"{sum(r['msgs_sent'] for r in reported):>9} {sum(r['msgs_recv'] for r in reported):>9}")
    return "\n".join(lines)
