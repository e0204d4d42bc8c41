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

# The last five are the emulated links' (dsim.links): zero when every link is ideal.
LINK_COLUMNS = ["msgs_lost", "bytes_lost", "send_s", "recv_s", "latency_s"]
BANDWIDTH_COLUMNS = ["rank", "role", "host", "bytes_sent", "bytes_recv", "msgs_sent", "msgs_recv", "bytes_relayed",
                     *LINK_COLUMNS]
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


def _links_used(rows: list[dict[str, Any]]) -> bool:
    return any(row.get(k) not in ("", 0, 0.0, None) for row in rows for k in LINK_COLUMNS)


def _link_cells(row: dict[str, Any] | None) -> str:
    """The emulated-link figures of a row (or the header): messages lost and transfer seconds."""
    if row is None:
        return f" {'lost':>7} {'send s':>9} {'recv s':>9}"
    return f" {row['msgs_lost']:>7} {row['send_s']:>9.3f} {row['recv_s']:>9.3f}"


def closing_table(rows: list[dict[str, Any]], limit: int = 24) -> str:
    """Per-node bandwidth, with a totals line; long runs show the first and last rows. With emulated
    links it adds each node's lost messages and its emulated send and receive seconds."""
    links = _links_used(rows)
    header = f"{'rank':>5} {'role':<8} {'host':<15} {'sent':>10} {'recv':>10} {'msgs out':>9} {'msgs in':>9}"
    lines = [header + (_link_cells(None) if links else "")]
    shown = rows if len(rows) <= limit else rows[: limit // 2] + [None] + rows[-limit // 2:]
    for row in shown:
        if row is None:
            lines.append(f"{'...':>5} ({len(rows) - limit} more nodes)")
            continue
        if row["bytes_sent"] == "":
            lines.append(f"{row['rank']:>5} {row['role']:<8} {row['host']:<15} {'(no report)':>10}")
            continue
        lines.append(f"{row['rank']:>5} {row['role']:<8} {row['host']:<15} {fmt_bytes(row['bytes_sent']):>10} "
                     f"{fmt_bytes(row['bytes_recv']):>10} {row['msgs_sent']:>9} {row['msgs_recv']:>9}"
                     + (_link_cells(row) if links else ""))
    reported = [r for r in rows if r["bytes_sent"] != ""]
    sent = sum(r["bytes_sent"] for r in reported)
    recv = sum(r["bytes_recv"] for r in reported)
    total = {k: sum(r[k] for r in reported) for k in ("msgs_lost", "send_s", "recv_s")} if links else {}
    lines.append(f"{'all':>5} {'':<8} {'':<15} {fmt_bytes(sent):>10} {fmt_bytes(recv):>10} "
                 f"{sum(r['msgs_sent'] for r in reported):>9} {sum(r['msgs_recv'] for r in reported):>9}"
                 + (_link_cells(total) if links else ""))
    return "\n".join(lines)
