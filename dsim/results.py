"""The run directory: config.toml, nodes/<rank>.jsonl, bandwidth CSVs, summary.json and the closing table."""

from __future__ import annotations

import csv
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

from dsim.config import to_toml
from dsim.console import fmt_bytes, fmt_seconds
from dsim.errors import DsimError
from dsim.nodelog import json_safe
from dsim.plan import format_ranks

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


# ---------------------------------------------------------------- the closing results, for people

def _percent(x: float) -> str:
    return f"{100 * x:.2f} %"


def _number(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.4g}"
    if isinstance(v, int) and abs(v) >= 10000:
        return f"{v:,}"
    return str(v)


def _spread(values: list[float], fmt: Any) -> str:
    """One value when all agree, else the mean with min and max."""
    if min(values) == max(values):
        return fmt(values[0])
    return f"mean {fmt(statistics.fmean(values))}, min {fmt(min(values))}, max {fmt(max(values))}"


def _value(key: str, v: Any) -> str:
    """Any other result, in units when its name says them (bytes, seconds, accuracy), else compactly."""
    if v is None:
        return "n/a"
    numeric = isinstance(v, int | float) and not isinstance(v, bool)
    if "bytes" in key and numeric:
        return fmt_bytes(v)
    if key == "mb_per_s" and numeric:
        return f"{v:.4g} MB/s"
    if key.endswith("_per_s") and numeric:
        return f"{v:,.0f}/s" if v >= 100 else f"{v:.3g}/s"
    if (key.endswith("_s") or key == "seconds") and numeric:
        return fmt_seconds(v)
    if key.startswith("accuracy") and numeric:
        return _percent(v)
    if isinstance(v, dict):
        numbers = [x for x in v.values() if isinstance(x, int | float) and not isinstance(x, bool)]
        what = f"{key.rsplit('per_', 1)[1]}s" if "per_" in key else "entries" if len(v) != 1 else "entry"
        if numbers and len(numbers) == len(v):
            return f"{_spread(numbers, lambda x: _value(key, x))} ({len(v)} {what})"
        return f"{len(v)} {what}" if v else "none"
    if isinstance(v, list | tuple):
        if not v:
            return "none"
        if len(v) <= 12 and all(not isinstance(x, dict | list) for x in v):
            return ", ".join(_value(key, x) for x in v)
        return f"{len(v)} entries"
    return _number(v)


def _accuracy(res: dict[str, Any]) -> str | None:
    """accuracy 94.15 % ± 0.23 (3 models), or over the nodes of a decentralized run, or one figure."""
    if "accuracy_std" in res and "accuracy_mean" in res:
        n = res.get("num_eval_models") or len(res.get("accuracies") or []) or None
        models = f" ({n} model{'s' if n != 1 else ''})" if n else ""
        return f"{_percent(res['accuracy_mean'])} ± {100 * res['accuracy_std']:.2f}{models}"
    if "accuracy_per_node" in res and "accuracy_mean" in res:
        n = len(res["accuracy_per_node"])
        return (f"{_percent(res['accuracy_mean'])} mean of {n} nodes (min {_percent(res['accuracy_min'])}, "
                f"max {_percent(res['accuracy_max'])})")
    if isinstance(res.get("accuracy"), int | float):
        return _percent(res["accuracy"])
    return None


def _clients(res: dict[str, Any]) -> str:
    missing = res.get("clients_missing") or []
    gone = f"{len(missing)} missing ({format_ranks(sorted(missing))})" if missing else "none missing"
    return f"{res['clients_answered']} answered, {gone}"


def _search(search: list[dict[str, Any]]) -> str:
    return ", ".join(f"{s['optimizer']} {s['lr']:g}: {_percent(s['accuracy'])}" for s in search) or "none"


def _history(history: list[dict[str, Any]]) -> str:
    """A round-based run's accuracy round by round (first and last rounds when there are many)."""
    scored = [(h["round"], h["accuracy"]) for h in history if isinstance(h.get("accuracy"), int | float)]
    if not scored:
        return f"{len(history)} rounds"
    shown = scored if len(scored) <= 6 else [*scored[:3], None, *scored[-2:]]
    return ", ".join("..." if s is None else f"round {s[0] + 1}: {_percent(s[1])}" for s in shown)


_LABELS = {"mb_per_s": "throughput", "msgs_per_s": "message rate", "seconds": "time"}
_HANDLED = {"accuracy_mean", "accuracy_std", "accuracies", "num_eval_models", "accuracy", "accuracy_min",
            "accuracy_max", "accuracy_per_node", "clients_answered", "clients_missing", "optimizer", "lr",
            "history", "dropped", "finished_t", "mean_val_gain", "search", "clients", "mean_bytes_per_client"}


def result_lines(results: dict[str, Any]) -> list[str]:
    """A program's summary (summary.json's `results`, without `per_node`) as aligned lines with units.

    The keys the programs share (accuracies, clients, bytes, times, an lr search, a round history)
    read as sentences; any other key shows its value compactly, in bytes or seconds when its name
    says so. Nested per-client tables stay in summary.json."""
    rows: list[tuple[str, str]] = []
    accuracy = _accuracy(results)
    if accuracy is not None:
        rows.append(("accuracy", accuracy))
    if "finished_t" in results:
        rows.append(("finished at", fmt_seconds(results["finished_t"])))
    if "clients_answered" in results:
        rows.append(("clients", _clients(results)))
    if "optimizer" in results and "lr" in results:
        rows.append(("chosen", f"{results['optimizer']}, lr {results['lr']:g}"))
    if results.get("search"):
        rows.append(("lr search", _search(results["search"])))
    if isinstance(results.get("mean_val_gain"), int | float):
        rows.append(("validation gain", f"{100 * results['mean_val_gain']:+.2f} points (mean over clients)"))
    if results.get("history"):
        rows.append(("history", _history(results["history"])))
    if isinstance(results.get("dropped"), dict):  # round -> clients that did not answer in it
        n = len(results["dropped"])
        rows.append(("dropped", f"clients missing in {n} round{'s' if n != 1 else ''}" if n else "none"))
    rows += [(_LABELS.get(k, k.replace("_", " ")), _value(k, v)) for k, v in results.items() if k not in _HANDLED]
    width = max((len(k) for k, _ in rows), default=0)
    return [f"  {k:<{width}}  {v}" for k, v in rows]
