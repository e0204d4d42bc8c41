"""Assemble the report: one run's sections, or a comparison followed by each run's sections."""

from __future__ import annotations

import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from dsim.console import fmt_bytes
from dsim.errors import DsimError
from dsim.report import charts, compare
from dsim.report.messages import deliveries
from dsim.report.metrics import headline, metric_series
from dsim.report.page import (
    Figures,
    Markup,
    esc,
    facts,
    frame,
    note,
    section,
    slug,
    status_html,
    table,
)
from dsim.report.rundir import RunData, expand, flat_config, load_run

SYNTHETIC_ALGORITHMS = {"base", "localdm", "collabdm", "mtt"}
SECTIONS = [("overview", "Overview"), ("bandwidth", "Bandwidth"), ("kinds", "By kind"), ("messages", "Messages"),
            ("metrics", "Metrics"), ("labels", "Labels"), ("synthetic", "Synthetic set"), ("config", "Config")]


def build_report(paths: list[Path], out: Path | None) -> tuple[Path, list[Path]]:
    """Write the HTML page and its PNGs; returns the page and the PNG files. A single argument (a
    run, or a folder of runs) defaults to `<it>/report.html`; several need `out`."""
    runs_dirs = expand(paths)
    if out is None:
        if len(paths) > 1:
            raise DsimError("--out is required when several directories are given")
        out = paths[0] / "report.html"
    if out.suffix.lower() not in (".html", ".htm"):
        raise DsimError(f"--out must name an .html file, got {out}")
    if out.exists() and out.is_dir():
        raise DsimError(f"--out {out} is a directory")
    runs = [load_run(p, name) for p, name in zip(runs_dirs, run_names(runs_dirs), strict=True)]
    out.parent.mkdir(parents=True, exist_ok=True)
    figures = Figures(out.parent, out.stem)
    subtitle = f"generated {time.strftime('%Y-%m-%d %H:%M:%S')} by dsim {_dsim_version()}"
    if len(runs) == 1:
        run = runs[0]
        body = run_sections(run, figures, prefix="")
        page = frame(f"dsim report: {run.name}", f"{run.path} · {subtitle}", SECTIONS, body)
    else:
        body = comparison_section(runs, figures)
        for run in runs:
            anchor = f"run-{slug(run.name)}"
            inner = run_sections(run, Figures(out.parent, f"{out.stem}-{slug(run.name)}", figures.dpi),
                                 prefix=anchor + "-", collect=figures.written)
            body += (f'<section id="{esc(anchor)}"><h2>{esc(run.name)} {status_html(run.status)}</h2>'
                     f"<details><summary>the run's own report</summary>{inner}</details></section>")
        nav = [("compare", "Comparison")] + [(f"run-{slug(r.name)}", r.name) for r in runs]
        page = frame(f"dsim report: {len(runs)} runs", subtitle, nav, body)
    out.write_text(page, encoding="utf-8")
    return out, list(figures.written)


def run_names(paths: list[Path]) -> list[str]:
    """Folder names, with the parent's name in front where two runs share a folder name."""
    names = [p.name for p in paths]
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]


def _dsim_version() -> str:
    try:
        return version("dsim")
    except PackageNotFoundError:
        return "?"


# ------------------------------------------------------------------ one run


def run_sections(run: RunData, figures: Figures, prefix: str, collect: list[Path] | None = None) -> str:
    """Every section of one run's report; `prefix` keeps anchors apart when runs share a page."""
    parts = [
        section(prefix + "overview", "Overview", overview(run)),
        section(prefix + "bandwidth", "Bandwidth per node", bandwidth(run, figures)),
        section(prefix + "kinds", "Traffic by message kind", kinds(run, figures)),
        section(prefix + "messages", "Message timeline", messages(run, figures)),
        section(prefix + "metrics", "Metrics", metrics(run, figures)),
        section(prefix + "labels", "Label distribution", labels(run, figures)),
        section(prefix + "synthetic", "Synthetic set", synthetic(run, figures)),
        section(prefix + "config", "Config", config(run)),
    ]
    if collect is not None:
        collect.extend(figures.written)
    return "".join(parts)


def overview(run: RunData) -> str:
    s, cfg = run.summary, run.config
    data = cfg.get("data", {}) if isinstance(cfg.get("data"), dict) else {}
    timings = s.get("timings") or {}
    devices = sorted({str(e.get("device")) for e in run.of_kind("start") if e.get("device")})
    pairs: list[tuple[str, Any]] = [
        ("status", status_html(run.status)),
        ("algorithm", run.algorithm),
        ("topology", f"{s.get('topology', cfg.get('topology', '?'))}, {s.get('nodes', len(run.ranks))} nodes"
                     + (f", server = rank {s['server']}" if s.get("server") is not None else "")),
        ("data", f"{data.get('dataset', '?')}, partition {data.get('partition', '?')}" if data else "not recorded"),
        ("seed", cfg.get("seed", "")),
        ("wall time (s)", s.get("wall_time_s", "")),
        ("start-up / run (s)", f"{timings.get('startup_s', '?')} / {timings.get('run_s', '?')}"),
        ("devices", ", ".join(devices) or "not recorded"),
        ("run id / config fingerprint", f"{s.get('run_id', '')} / {s.get('config_fingerprint', '')}"),
    ]
    out = facts(pairs) + "<h3>Settings away from the defaults</h3>" + settings(run)
    failures = s.get("failures") or []
    if failures:
        out += "<h3>Failures</h3>" + table(["rank", "reason"], [[f.get("rank", ""), f.get("reason", f)]
                                                                 if isinstance(f, dict) else ["", f] for f in failures])
    errors = run.errors()
    if errors:
        out += "<h3>Node errors</h3>" + table(["rank", "t (s)", "reason"],
                                              [[e.get("rank"), e.get("t"), e.get("reason", "")] for e in errors])
    warnings = s.get("warnings") or []
    if warnings:
        out += "<h3>Warnings</h3><ul>" + "".join(f"<li>{esc(w)}</li>" for w in warnings) + "</ul>"
    losses = _losses(run)
    if losses:
        out += "<h3>Lost, dropped, offline</h3>" + facts(losses)
    results = s.get("results") or {}
    head = headline(results)
    out += "<h3>Results</h3>"
    out += facts(list(head.items())) if head else note("no numeric results in summary.json")
    per_node = results.get("per_node") or {}
    if per_node:
        keys: list[str] = []
        for res in per_node.values():
            keys += [k for k, v in (res or {}).items() if k not in keys and not isinstance(v, dict | list)]
        rows = [[int(r) if str(r).isdigit() else r, *((res or {}).get(k, "") for k in keys)]
                for r, res in per_node.items()]
        out += table(["node", *keys], rows, fold_over=1, summary="per-node results")
    return out


def _losses(run: RunData) -> list[tuple[str, Any]]:
    lost = run.of_kind("lost")
    dropped = run.of_kind("dropped")
    offline = run.of_kind("offline")
    pairs: list[tuple[str, Any]] = []
    if lost:
        pairs.append(("lost messages", f"{len(lost):,} ({fmt_bytes(sum(e.get('nbytes', 0) for e in lost))})"))
    if dropped:
        pairs.append(("dropped messages", f"{len(dropped):,} ({fmt_bytes(sum(e.get('nbytes', 0) for e in dropped))})"))
    if offline:
        total = sum(b - a for e in offline for a, b in e.get("periods", []))
        pairs.append(("offline", f"{len(offline)} nodes, {total:.1f} node-seconds"))
    return pairs


def bandwidth(run: RunData, figures: Figures) -> str:
    if not run.bandwidth:
        return note("no bandwidth.csv in this run (it ended before the counters were written)")
    cols = [c for c in ("bytes_sent", "bytes_recv", "bytes_relayed", "msgs_sent", "msgs_recv", "msgs_lost",
                        "bytes_lost", "send_s", "recv_s") if any(r.get(c) for r in run.bandwidth)]
    rows = [[r["rank"], r.get("role", ""), r.get("host", ""),
             *(("bytes", r.get(c) or 0) if c.startswith("bytes") else r.get(c, "") for c in cols)]
            for r in sorted(run.bandwidth, key=lambda r: r["rank"])]
    return (figures.embed(charts.bandwidth_chart(run), "bandwidth", "Bytes counted per frame, on send and on "
                          "receive; relays count what they forward.")
            + table(["rank", "role", "host", *cols], rows, fold_over=40, summary="per-node counters"))


def kinds(run: RunData, figures: Figures) -> str:
    if not run.by_kind:
        return note("no bandwidth_by_kind.csv in this run")
    totals: dict[str, list[float]] = {}
    for r in run.by_kind:
        t = totals.setdefault(r["kind"], [0, 0, 0, 0])
        for i, c in enumerate(("bytes_sent", "bytes_recv", "msgs_sent", "msgs_recv")):
            t[i] += r.get(c) or 0
    rows = [[k, ("bytes", t[0]), ("bytes", t[1]), int(t[2]), int(t[3]), ("bytes", t[0] / t[2] if t[2] else 0)]
            for k, t in sorted(totals.items(), key=lambda kv: -kv[1][0])]
    return (figures.embed(charts.kinds_chart(run), "kinds")
            + table(["kind", "bytes sent", "bytes received", "messages sent", "messages received",
                     "bytes / message"], rows))


def messages(run: RunData, figures: Figures) -> str:
    log = run.messages
    if log is None:
        return note("no message log in this run (messages/<process>.csv; `net.message_log` on)")
    if not len(log):
        return note("the message log is empty")
    counts = {ev: int(log.select(ev).sum()) for ev in ("sent", "recv", "relayed", "lost", "dropped")}
    out = facts([(f"{k} events", v) for k, v in counts.items()])
    few = len(run.ranks) <= charts.FEW_NODES and counts["sent"] <= charts.FEW_MESSAGES
    caption = ("One line per message from its sender's row (when sent) to its receiver's row (when it "
               "arrived), coloured by kind." if few else
               "Too many nodes or messages to draw one by one: bytes each node sent per time bin, and "
               "all nodes' bytes by kind.")
    out += figures.embed(charts.timeline_chart(run), "timeline", caption)
    out += figures.embed(charts.matrix_chart(run), "matrix", "Bytes from each original sender to each final receiver.")
    if few:
        d = deliveries(log)
        rows = [[float(round(ts, 4)), "" if np.isnan(tr) else float(round(tr, 4)), int(s), int(r), log.kinds[k],
                 ("bytes", int(b))] for ts, tr, s, r, k, b in zip(d.t_sent, d.t_recv, d.src, d.dst, d.kind, d.nbytes,
                                                                   strict=True)]
        out += table(["sent (s)", "received (s)", "from", "to", "kind", "bytes"], rows, fold_over=1,
                     summary="every message")
    return out


def metrics(run: RunData, figures: Figures) -> str:
    series = metric_series(run.of_kind("metric"))
    if not series:
        return note("the program logged no metric with two or more points")
    rows = []
    for s in series:
        finals = [s.arrays(n)[2][-1] for n in s.points]
        rows.append([s.label, s.x_name or "-", len(s.points), s.length, sum(finals) / len(finals)])
    skipped = len(series) - charts.MAX_SERIES
    text = f"The first {charts.MAX_SERIES} quantities are drawn. " if skipped > 0 else ""
    caption = text + ("Against the bytes all nodes had sent by then, from the message log." if run.messages
                      else "No message log: no bytes axis.")
    return (figures.embed(charts.metrics_chart(run, series), "metrics", caption)
            + table(["quantity", "x", "nodes", "points", "last value (mean over nodes)"], rows))


def labels(run: RunData, figures: Figures) -> str:
    shares = run.shares()
    if shares is None and "data_fingerprint" in run.summary and not run.summary["data_fingerprint"]:
        return note("this program uses no data")
    if shares is None:
        return note("not recorded (runs before the nodes' `share` event do not carry label counts)")
    fig = charts.labels_chart(run, shares)
    if fig is None:
        return note("no node holds train data")
    classes = sorted({int(c) for v in shares.values() for c in v})
    rows = [[r, sum(v.values()), len(v), *(v.get(str(c), 0) for c in classes)]
            for r, v in sorted(shares.items()) if v]
    return figures.embed(fig, "labels") + table(["node", "samples", "classes", *map(str, classes)], rows,
                                                fold_over=40, summary="label counts")


def synthetic(run: RunData, figures: Figures) -> str:
    fig = charts.synthetic_chart(run)
    if fig is None:
        return note("no synthetic.npz in this run" + (" (the server did not get to write it)"
                                                      if run.algorithm in SYNTHETIC_ALGORITHMS else ""))
    return figures.embed(fig, "synthetic", "Each image scaled to its own 1st-99th percentile range.")


def config(run: RunData) -> str:
    path = run.path / "config.toml"
    if not path.is_file():
        return note("no config.toml in this run")
    return f"<details><summary>config.toml</summary><pre>{esc(path.read_text())}</pre></details>"


def settings(run: RunData) -> str:
    """The keys that make this run what it is: those set away from the defaults."""
    changed = non_defaults(run) if run.config else []
    if changed is None:
        return note("defaults unknown here (the program does not load in this environment)")
    if not run.config:
        return note("no config.toml in this run")
    return table(["key", "value", "default"], changed, sortable=False) if changed else note("every key at its default")


def non_defaults(run: RunData) -> list[list[Any]] | None:
    """(key, value, default) of every key the run set away from its program's defaults (`out` aside);
    None when the program cannot be loaded here to know its defaults."""
    from dsim.config import resolve
    from dsim.options import to_dict

    try:
        defaults = flat_config(to_dict(resolve(flags={"algorithm": run.algorithm})))
    except Exception:  # a user's program module that is not importable here: no defaults to compare with
        return None
    return [[key, value, defaults.get(key, "")] for key, value in flat_config(run.config).items()
            if key != "out" and (key not in defaults or defaults[key] != value)]


# ------------------------------------------------------------------ several runs


def comparison_section(runs: list[RunData], figures: Figures) -> str:
    header, rows = compare.comparison_rows(runs)
    rows = [[Markup(f'<a href="#run-{esc(slug(row[0]))}">{esc(row[0])}</a>'), *row[1:]] for row in rows]
    status_col = header.index("status")
    for row in rows:
        row[status_col] = status_html(str(row[status_col]))
    content = table(header, rows)
    grouped = compare.seed_groups(runs)
    if grouped is not None:
        content += "<h3>Over seeds</h3>" + table(*grouped)
    content += figures.embed(compare.overlay_chart(runs), "compare-metrics",
                             "Mean over nodes at each round or step.") or note("no metric is shared by two runs")
    content += figures.embed(compare.bytes_chart(runs), "compare-bytes")
    return section("compare", f"Comparison of {len(runs)} runs", content)
