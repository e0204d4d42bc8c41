"""Several runs side by side: the config keys that differ, status, time, headline results, bytes,
and each shared metric's curves overlaid (the mean over nodes at each round or step)."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from dsim.report.charts import BYTES, MAX_SERIES
from dsim.report.metrics import Series, headline, metric_series
from dsim.report.rundir import RunData, flat_config

# Keys that differ between any two runs without saying anything about the experiment.
IGNORED_KEYS = {"out"}


def differing_keys(runs: list[RunData]) -> list[str]:
    """Config keys (dotted) whose values are not the same in every run, in config order."""
    flats = [flat_config(r.config) for r in runs]
    keys: list[str] = []
    for flat in flats:
        keys += [k for k in flat if k not in keys]
    return [k for k in keys if k not in IGNORED_KEYS and len({repr(f.get(k)) for f in flats}) > 1]


def traffic_totals(run: RunData) -> dict[str, float]:
    sent = [float(r.get("bytes_sent") or 0) for r in run.bandwidth]
    return {"bytes_total": float(sum(sent)), "bytes_per_node": float(np.mean(sent)) if sent else 0.0,
            "bytes_max_node": float(max(sent, default=0.0))}


def comparison_rows(runs: list[RunData]) -> tuple[list[str], list[list[Any]]]:
    """Header and one row per run: name, differing keys, status, wall time, results, traffic."""
    keys = differing_keys(runs)
    flats = [flat_config(r.config) for r in runs]
    results = [headline(r.summary.get("results") or {}) for r in runs]
    result_keys: list[str] = []
    for res in results:
        result_keys += [k for k in res if k not in result_keys]
    header = ["run", *keys, "status", "wall time (s)", *result_keys, "bytes sent / node", "bytes sent (total)"]
    rows = []
    for run, flat, res in zip(runs, flats, results, strict=True):
        traffic = traffic_totals(run)
        rows.append([run.name, *(flat.get(k, "") for k in keys), run.status, run.summary.get("wall_time_s", ""),
                     *(res.get(k, "") for k in result_keys), ("bytes", traffic["bytes_per_node"]),
                     ("bytes", traffic["bytes_total"])])
    return header, rows


def seed_groups(runs: list[RunData]) -> tuple[list[str], list[list[Any]]] | None:
    """When the runs differ in `seed` and something else, one row per setting of the other keys with
    each headline result as mean ± std over its seeds (None when there is nothing to group)."""
    keys = differing_keys(runs)
    if "seed" not in keys:
        return None
    others = [k for k in keys if k != "seed"]
    groups: dict[tuple, list[RunData]] = {}
    for run in runs:
        flat = flat_config(run.config)
        groups.setdefault(tuple(repr(flat.get(k)) for k in others), []).append(run)
    if all(len(g) == 1 for g in groups.values()):
        return None
    result_keys: list[str] = []
    for run in runs:
        result_keys += [k for k in headline(run.summary.get("results") or {}) if k not in result_keys]
    header = [*others, "runs", "ok", *(f"{k} (mean ± std)" for k in result_keys), "bytes sent / node (mean)"]
    rows = []
    for members in groups.values():
        flat = flat_config(members[0].config)
        row: list[Any] = [flat.get(k, "") for k in others]
        row += [len(members), sum(r.status == "ok" for r in members)]
        for key in result_keys:
            values = [headline(r.summary.get("results") or {}).get(key) for r in members]
            values = [v for v in values if v is not None]
            row.append(f"{np.mean(values):.4g} ± {np.std(values):.2g}" if values else "")
        row.append(("bytes", float(np.mean([traffic_totals(r)["bytes_per_node"] for r in members]))))
        rows.append(row)
    return header, rows


def overlay_chart(runs: list[RunData]) -> Figure | None:
    """Each quantity logged by two or more runs: one panel against round/step, one against time,
    one line per run."""
    per_run = [{(s.phase, s.quantity): s for s in metric_series(r.of_kind("metric"))} for r in runs]
    counts: dict[tuple[str, str], int] = {}
    for found in per_run:
        for key in found:
            counts[key] = counts.get(key, 0) + 1
    shared = [k for k, n in counts.items() if n >= 2]
    if not shared:
        return None
    order = {(s.phase, s.quantity): i for i, s in enumerate(
        sorted((next(f[k] for f in per_run if k in f) for k in shared),
               key=lambda s: (0 if "acc" in s.quantity else 1 if "loss" in s.quantity else 2, s.phase)))}
    shared = sorted(shared, key=order.get)[:MAX_SERIES]
    fig = Figure(figsize=(11.0, 2.9 * len(shared)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(shared), 2, squeeze=False))
    for row, key in zip(axes, shared, strict=True):
        x_name = ""
        for i, (run, found) in enumerate(zip(runs, per_run, strict=True)):
            s: Series | None = found.get(key)
            if s is None:
                continue
            x_name = x_name or s.x_name
            x, t, y = s.mean_curve()
            style = {"color": f"C{i % 10}", "lw": 1.3, "label": run.name, "marker": "." if len(x) < 30 else None}
            row[0].plot(x, y, **style)
            row[1].plot(t, y, **style)
        label = f"{key[0]} {key[1]}" if key[0] else key[1]
        row[0].set_ylabel(label)
        row[0].set_xlabel(x_name or "record")
        row[1].set_xlabel("seconds since launch")
        for ax in row:
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=7)
    fig.suptitle("metrics of the compared runs (mean over nodes)")
    return fig


def accuracy_key(results: dict[str, Any]) -> str | None:
    """The headline accuracy of a run's results: accuracy_mean, accuracy, or the first *accuracy* key."""
    head = headline(results)
    for key in ("accuracy_mean", "accuracy", "mean_accuracy"):
        if key in head:
            return key
    return next((k for k in head if "acc" in k.lower() and not k.endswith("_std")), None)


def bytes_chart(runs: list[RunData]) -> Figure | None:
    """Mean and largest bytes sent per node, run by run; beside it, accuracy against bytes per node
    (the trade-off a communication-efficient method is judged by) when the runs report one."""
    if not any(r.bandwidth for r in runs):
        return None
    totals = [traffic_totals(r) for r in runs]
    scores = []
    for run, t in zip(runs, totals, strict=True):
        results = run.summary.get("results") or {}
        key = accuracy_key(results)
        if key is not None:
            std = results.get(key.replace("_mean", "_std")) if key.endswith("_mean") else None
            scores.append((run.name, t["bytes_per_node"], float(results[key]), float(std or 0.0), key))
    fig = Figure(figsize=(max(5.0, 1.1 * len(runs) + 2) + (5.0 if scores else 0.0), 3.8), layout="constrained")
    ax, side = fig.subplots(1, 2, width_ratios=[1.3, 1]) if scores else (fig.add_subplot(), None)
    x = np.arange(len(runs))
    ax.bar(x - 0.2, [t["bytes_per_node"] for t in totals], 0.4, label="mean per node")
    ax.bar(x + 0.2, [t["bytes_max_node"] for t in totals], 0.4, label="busiest node")
    ax.set_xticks(x, [r.name for r in runs], rotation=20 if len(runs) > 4 else 0,
                  ha="right" if len(runs) > 4 else "center", fontsize=8)
    ax.yaxis.set_major_formatter(BYTES)
    ax.set_ylabel("bytes sent")
    ax.set_title("bytes sent per node")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    if side is not None:
        for i, (name, b, acc, std, _key) in enumerate(scores):
            side.errorbar([b], [acc], yerr=[std], fmt="o", color=f"C{i % 10}", capsize=3, label=name)
            side.annotate(name, (b, acc), textcoords="offset points", xytext=(5, 4), fontsize=7)
        side.set_xscale("log")
        side.xaxis.set_major_formatter(BYTES)
        side.set_xlabel("bytes sent per node (mean, log scale)")
        side.set_ylabel(scores[0][4])
        side.set_title("accuracy against communication")
        side.grid(alpha=0.3)
    return fig
