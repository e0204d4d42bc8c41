"""The figures of one run, drawn with matplotlib's object API (no pyplot state, no display).

Each function returns a Figure or None when the run has nothing to draw for it; `page` turns
figures into PNG files and inline images. Sizes adapt to the node count: per-node bars and
per-message arrows for tens of nodes, distributions and heatmaps for thousands.
"""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from dsim.console import fmt_bytes
from dsim.report.messages import deliveries, sender_bins, traffic_matrix
from dsim.report.metrics import Series
from dsim.report.rundir import RunData

FEW_NODES = 40          # up to this many: one bar / one row per node
FEW_MESSAGES = 5000     # up to this many deliveries (and FEW_NODES nodes): one arrow each
MAX_SERIES = 8          # metric rows drawn; the rest are listed in the table

BYTES = FuncFormatter(lambda v, _pos: fmt_bytes(v))


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def kind_colours(kinds: list[str]) -> dict[str, tuple]:
    cmap = colormaps["tab10" if len(kinds) <= 10 else "tab20"]
    return {k: cmap(i % cmap.N) for i, k in enumerate(kinds)}


def bandwidth_chart(run: RunData) -> Figure | None:
    """Bytes sent, received and relayed per node: grouped bars for few nodes, lines over ranks for many."""
    rows = sorted(run.bandwidth, key=lambda r: r["rank"])
    if not rows:
        return None
    ranks = np.array([r["rank"] for r in rows])
    cols = [("bytes_sent", "sent", "#1f77b4"), ("bytes_recv", "received", "#ff7f0e"),
            ("bytes_relayed", "relayed", "#2ca02c")]
    values = {c: np.array([float(r.get(c) or 0) for r in rows]) for c, _, _ in cols}
    if not values["bytes_relayed"].any():
        cols = cols[:2]
    fig = _figure(min(max(6.0, 0.35 * len(rows) + 3), 14.0), 3.8)
    ax = fig.add_subplot()
    if len(rows) <= FEW_NODES:
        width = 0.8 / len(cols)
        x = np.arange(len(rows))
        for i, (c, label, colour) in enumerate(cols):
            ax.bar(x + (i - (len(cols) - 1) / 2) * width, values[c], width, label=label, color=colour)
        ax.set_xticks(x, [f"{r}\n{run.roles.get(r, '')[:1]}" for r in ranks], fontsize=8)
        ax.set_xlabel("node (s = server, c = client, p = peer)")
    else:
        for c, label, colour in cols:
            ax.plot(ranks, values[c], label=label, color=colour, lw=0.8)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("node rank")
    ax.yaxis.set_major_formatter(BYTES)
    ax.set_ylabel("bytes")
    ax.set_title(f"{run.name}: traffic per node")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return fig


def kinds_chart(run: RunData) -> Figure | None:
    """Total bytes sent per message kind (horizontal bars, with message counts as labels)."""
    totals: dict[str, list[float]] = {}
    for r in run.by_kind:
        t = totals.setdefault(r["kind"], [0.0, 0.0])
        t[0] += float(r.get("bytes_sent") or 0)
        t[1] += float(r.get("msgs_sent") or 0)
    if not totals:
        return None
    kinds = sorted(totals, key=lambda k: totals[k][0])
    colours = kind_colours(sorted(totals))
    fig = _figure(7.0, 0.4 * len(kinds) + 1.4)
    ax = fig.add_subplot()
    y = np.arange(len(kinds))
    ax.barh(y, [totals[k][0] for k in kinds], color=[colours[k] for k in kinds])
    for i, k in enumerate(kinds):
        ax.text(totals[k][0], i, f"  {int(totals[k][1]):,} msgs", va="center", fontsize=8)
    ax.set_yticks(y, kinds)
    ax.xaxis.set_major_formatter(BYTES)
    ax.set_xlabel("bytes sent (all nodes)")
    ax.set_title(f"{run.name}: traffic by message kind")
    ax.margins(x=0.25)
    return fig


def timeline_chart(run: RunData) -> Figure | None:
    """Who sent what to whom, when: an arrow per message (sender row to receiver row, coloured by
    kind, a cross where it was lost) for small runs; bytes sent per node over time bins otherwise."""
    log = run.messages
    if log is None or not len(log):
        return None
    ranks = max(run.ranks + [int(log.src.max()), int(log.dst.max())]) + 1
    d = deliveries(log)
    t_end = float(np.nanmax([log.t.max(), float(run.summary.get("wall_time_s") or 0)]))
    if ranks > FEW_NODES or len(d.t_sent) > FEW_MESSAGES:
        return _traffic_heatmap(run, ranks, t_end)
    colours = kind_colours(log.kinds)
    fig = _figure(12.0, max(3.5, 0.32 * ranks + 1.6))
    ax = fig.add_subplot()
    arrived = ~np.isnan(d.t_recv)
    for k, name in enumerate(log.kinds):
        m = (d.kind == k) & arrived
        if m.any():
            segs = np.stack([np.column_stack([d.t_sent[m], d.src[m]]), np.column_stack([d.t_recv[m], d.dst[m]])],
                            axis=1)
            ax.add_collection(LineCollection(segs, colors=[colours[name]], linewidths=0.9, alpha=0.75))
            ax.scatter(d.t_sent[m], d.src[m], s=10, facecolors="none", edgecolors=[colours[name]], zorder=3,
                       linewidths=0.7)
            down = m & (d.dst > d.src)  # rank axis points down: the head shows which way it went
            for mask, marker in ((down, "v"), (m & ~down, "^")):
                ax.scatter(d.t_recv[mask], d.dst[mask], s=14, color=colours[name], marker=marker, zorder=3)
            ax.plot([], [], color=colours[name], marker="v", label=f"{name} ({int(m.sum())})")
        m = (d.kind == k) & ~arrived
        if m.any():
            ax.scatter(d.t_sent[m], d.src[m], s=28, color=colours[name], marker="x", zorder=3)
    gone = log.select("lost") | log.select("dropped")
    if gone.any():
        ax.scatter(log.t[gone], log.node[gone], s=36, facecolors="none", edgecolors="red", zorder=4,
                   label=f"lost / dropped ({int(gone.sum())})")
    ax.set_ylim(ranks - 0.5, -0.5)
    ax.set_xlim(0, t_end * 1.01 if t_end > 0 else 1)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=min(ranks, 25)))
    ax.set_ylabel("node rank")
    ax.set_xlabel("seconds since launch")
    ax.set_title(f"{run.name}: messages (o sender → receiver; x = not delivered)")
    ax.grid(alpha=0.25)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), title="kind (messages)", title_fontsize=8)
    return fig


def _traffic_heatmap(run: RunData, ranks: int, t_end: float) -> Figure:
    log = run.messages
    assert log is not None
    grid, edges, group = sender_bins(log, ranks, bins=min(120, max(10, int(len(log) ** 0.5))), t_end=t_end)
    fig = _figure(12.0, 4.8)
    ax, side = fig.subplots(1, 2, width_ratios=[3, 1])
    img = ax.imshow(grid, aspect="auto", origin="upper", interpolation="nearest", cmap="viridis",
                    extent=(edges[0], edges[-1], grid.shape[0] * group - 0.5, -0.5))
    fig.colorbar(img, ax=ax, label="bytes sent in bin", format=BYTES)
    ax.set_xlabel("seconds since launch")
    ax.set_ylabel("sender rank" if group == 1 else f"sender rank ({group} per row)")
    ax.set_title(f"{run.name}: bytes sent per {'node' if group == 1 else 'group of nodes'} over time")
    colours = kind_colours(log.kinds)
    sent = log.select("sent")
    centres = (edges[:-1] + edges[1:]) / 2
    stack = [np.histogram(log.t[sent & (log.kind == k)], bins=edges, weights=log.nbytes[sent & (log.kind == k)])[0]
             for k in range(len(log.kinds))]
    side.stackplot(centres, stack, labels=log.kinds, colors=[colours[k] for k in log.kinds])
    side.yaxis.set_major_formatter(BYTES)
    side.set_xlabel("seconds")
    side.set_title("all nodes, by kind", fontsize=10)
    side.legend(fontsize=7)
    return fig


def matrix_chart(run: RunData) -> Figure | None:
    """Bytes from each sender to each receiver (message log), the shape of the communication."""
    log = run.messages
    if log is None or not log.select("sent").any():
        return None
    ranks = max(run.ranks + [int(log.src.max()), int(log.dst.max())]) + 1
    matrix, group = traffic_matrix(log, ranks)
    fig = _figure(5.6, 4.8)
    ax = fig.add_subplot()
    shown = np.where(matrix > 0, matrix, np.nan)
    span = matrix.shape[0] * group - 0.5
    img = ax.imshow(shown, cmap="magma_r", interpolation="nearest", extent=(-0.5, span, span, -0.5))
    fig.colorbar(img, ax=ax, label="bytes", format=BYTES)
    per = "" if group == 1 else f" ({group} ranks per cell)"
    ax.set_xlabel("receiver" + per)
    ax.set_ylabel("sender" + per)
    ax.set_title(f"{run.name}: traffic matrix", fontsize=10)
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(MaxNLocator(integer=True, nbins=min(ranks, 12)))
    return fig


def metrics_chart(run: RunData, series: list[Series]) -> Figure | None:
    """One row per quantity: against its round/step, against time and, with a message log, against
    the bytes all nodes had sent by then."""
    if not series:
        return None
    rows = series[:MAX_SERIES]
    cum = run.messages.cumulative_sent() if run.messages is not None else None
    ncols = 3 if cum is not None and len(cum[0]) else 2
    fig = _figure(4.2 * ncols, 2.7 * len(rows))
    axes = np.atleast_2d(fig.subplots(len(rows), ncols, squeeze=False))
    for row, s in zip(axes, rows, strict=False):
        nodes = sorted(s.points)
        many = len(nodes) > 12
        cmap = colormaps["tab10" if len(nodes) <= 10 else "tab20"]
        for i, node in enumerate(nodes):
            x, t, y = s.arrays(node)
            style = {"color": "0.55", "lw": 0.5, "alpha": 0.5} if many else \
                {"color": cmap(i % cmap.N), "lw": 1.1, "label": f"node {node}", "marker": "." if len(x) < 30 else None}
            row[0].plot(x, y, **style)
            row[1].plot(t, y, **style)
            if ncols == 3:
                row[2].plot(np.interp(t, cum[0], cum[1], left=0.0), y, **style)
        if many:
            x, t, y = s.mean_curve()
            row[0].plot(x, y, color="C3", lw=1.6, label=f"mean of {len(nodes)} nodes")
            row[1].plot(t, y, color="C3", lw=1.6)
            if ncols == 3:
                row[2].plot(np.interp(t, cum[0], cum[1], left=0.0), y, color="C3", lw=1.6)
        row[0].set_xlabel(s.x_name or "record")
        row[1].set_xlabel("seconds since launch")
        if ncols == 3:
            row[2].set_xlabel("bytes sent by all nodes")
            row[2].xaxis.set_major_formatter(BYTES)
            row[2].xaxis.set_major_locator(MaxNLocator(4))
        row[0].set_ylabel(s.label)
        for ax in row:
            ax.grid(alpha=0.3)
        if len(nodes) <= 10 or many:
            row[0].legend(fontsize=7)
    fig.suptitle(f"{run.name}: metrics")
    return fig


def labels_chart(run: RunData, shares: dict[int, dict[str, int]]) -> Figure | None:
    """Every node's train labels (None when no node recorded its share)."""
    nodes = [r for r in sorted(shares) if shares[r]]
    if not nodes:
        return None
    classes = sorted({int(c) for r in nodes for c in shares[r]})
    counts = np.array([[shares[r].get(str(c), 0) for c in classes] for r in nodes], dtype=float)
    return label_figure(counts, [str(r) for r in nodes], [str(c) for c in classes],
                        f"{run.name}: label distribution of every node's share")


def label_figure(counts: np.ndarray, nodes: list[str], classes: list[str], title: str) -> Figure:
    """Samples per node (rows of `counts`) and class (columns): stacked bars per node for few nodes, a
    node x class heatmap for many. What `dsim report` and `dsim partition --plot` both draw."""
    fig = _figure(min(max(6.0, 0.3 * len(nodes) + 3), 14.0), 4.0)
    ax = fig.add_subplot()
    if len(nodes) <= FEW_NODES * 2:
        cmap = colormaps["tab10" if len(classes) <= 10 else "tab20"]
        bottom = np.zeros(len(nodes))
        x = np.arange(len(nodes))
        for j, c in enumerate(classes):
            ax.bar(x, counts[:, j], 0.85, bottom=bottom, color=cmap(j % cmap.N), label=c, linewidth=0)
            bottom += counts[:, j]
        ax.set_xticks(x, nodes, fontsize=8 if len(nodes) <= 40 else 5)
        ax.set_ylabel("train samples")
        ax.legend(title="class", fontsize=7, title_fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5),
                  ncols=1 if len(classes) <= 20 else 2)
    else:
        img = ax.imshow(counts.T, aspect="auto", cmap="Blues", interpolation="nearest",
                        extent=(-0.5, len(nodes) - 0.5, len(classes) - 0.5, -0.5))
        fig.colorbar(img, ax=ax, label="train samples")
        ax.set_ylabel("class")
        ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set_xlabel("node")
    ax.set_title(title, fontsize=10)
    return fig


def synthetic_chart(run: RunData, per_class: int = 10) -> Figure | None:
    """The server's global synthetic set: one row per class, up to `per_class` images, each scaled to
    its own range (the sets are normalised, not pixel values)."""
    syn = run.synthetic
    if not syn or "images" not in syn or "labels" not in syn or not len(syn["labels"]):
        return None
    images, labels = syn["images"], syn["labels"].astype(int)
    classes = sorted(set(labels.tolist()))
    cols = min(per_class, max(int((labels == c).sum()) for c in classes))
    cell = 0.5 if len(classes) <= 20 else 0.3
    fig = Figure(figsize=(cols * cell + 0.8, len(classes) * cell + 0.6))
    fig.subplots_adjust(left=0.06, right=0.99, top=1 - 0.45 / (len(classes) * cell + 0.6), bottom=0.01,
                        wspace=0.05, hspace=0.05)
    axes = np.atleast_2d(fig.subplots(len(classes), cols, squeeze=False))
    for i, c in enumerate(classes):
        idx = np.flatnonzero(labels == c)[:cols]
        for j in range(cols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if j < len(idx):
                img = images[idx[j]]
                img = np.transpose(img, (1, 2, 0)) if img.ndim == 3 else img
                lo, hi = np.percentile(img, [1, 99])
                img = np.clip((img - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
                ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", interpolation="nearest")
            if j == 0:
                ax.set_ylabel(str(c), rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(f"{run.name}: synthetic set ({len(labels)} images, {len(classes)} classes)", fontsize=10)
    return fig
