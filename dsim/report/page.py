"""HTML building blocks: escaped tables, figures saved as PNG beside the page and inlined as base64
(so the page opens offline, from file://, with nothing beside it), and the page frame."""

from __future__ import annotations

import base64
import html
import io
import re
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from dsim.console import fmt_bytes

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #222; background: #fafafa; }
header { background: #243b53; color: #fff; padding: 14px 28px; }
header h1 { margin: 0; font-size: 22px; } header p { margin: 4px 0 0; opacity: .85; }
nav { background: #e8eef4; padding: 6px 28px; position: sticky; top: 0; z-index: 2; border-bottom: 1px solid #cdd7e1; }
nav a { margin-right: 14px; color: #1d4f91; text-decoration: none; }
main { padding: 6px 28px 40px; max-width: 1400px; }
section { background: #fff; border: 1px solid #e1e5ea; border-radius: 6px; padding: 6px 18px 14px; margin: 16px 0; }
h2 { font-size: 18px; border-bottom: 1px solid #eee; padding-bottom: 4px; } h3 { font-size: 15px; }
table { border-collapse: collapse; margin: 8px 0; font-size: 13px; }
th, td { border: 1px solid #dde2e8; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f1f4f7; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.sortable th { cursor: pointer; } table.sortable th:hover { background: #e2e8ee; }
figure { margin: 10px 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 12px; color: #555; }
.ok { color: #18794e; font-weight: 600; } .bad { color: #c62828; font-weight: 600; }
.note { color: #666; font-style: italic; }
pre { background: #f5f7f9; padding: 8px; overflow: auto; font-size: 12px; max-height: 480px; }
details > summary { cursor: pointer; font-weight: 600; margin: 6px 0; }
"""

# Click a header to sort by it; numeric cells sort by their raw value (data-v).
SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var dir = th.dataset.dir === "asc" ? -1 : 1; th.dataset.dir = dir === 1 ? "asc" : "desc";
      function key(row) { var c = row.cells[col]; if (!c) return ""; var v = c.dataset.v;
        return v !== undefined ? parseFloat(v) : c.textContent; }
      rows.sort(function (a, b) { var x = key(a), y = key(b);
        if (typeof x === "number" && typeof y === "number") return dir * (x - y);
        return dir * String(x).localeCompare(String(y), undefined, {numeric: true}); });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


class Markup(str):
    """HTML that is already safe (built here), not to be escaped again."""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def cell(value: Any) -> str:
    """One <td>: numbers right-aligned and sortable, ("bytes", n) shown as 1.2 MB, floats to 4 digits."""
    if isinstance(value, Markup):
        return f"<td>{value}</td>"
    if isinstance(value, tuple) and len(value) == 2 and value[0] == "bytes":
        return f'<td class="num" data-v="{float(value[1])}">{esc(fmt_bytes(float(value[1])))}</td>'
    if isinstance(value, bool) or value is None:
        return f"<td>{esc('' if value is None else value)}</td>"
    if isinstance(value, int):
        return f'<td class="num" data-v="{value}">{value:,}</td>'
    if isinstance(value, float):
        text = f"{value:.4g}" if abs(value) < 1e6 else f"{value:,.0f}"
        return f'<td class="num" data-v="{value}">{esc(text)}</td>'
    if isinstance(value, list | dict):
        return f"<td><code>{esc(value)}</code></td>"
    return f"<td>{esc(value)}</td>"


def table(header: list[str], rows: list[list[Any]], sortable: bool = True, fold_over: int = 0,
          summary: str = "") -> str:
    """An HTML table; longer than `fold_over` rows (when set) it sits in a closed <details>."""
    cls = ' class="sortable"' if sortable else ""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    out = f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    if fold_over and len(rows) > fold_over:
        return f"<details><summary>{esc(summary or 'table')} ({len(rows):,} rows)</summary>{out}</details>"
    return out


def facts(pairs: list[tuple[str, Any]]) -> str:
    """A two-column key/value table."""
    rows = "".join(f"<tr><th>{esc(k)}</th>{cell(v)}</tr>" for k, v in pairs)
    return f"<table>{rows}</table>"


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def status_html(status: str) -> Markup:
    return Markup(f'<span class="{"ok" if status == "ok" else "bad"}">{esc(status)}</span>')


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "run"


class Figures:
    """Saves each figure once, as `<stem>-<name>.png` beside the page (for papers), and returns the
    same PNG inlined in an <img>, with a link to the file."""

    def __init__(self, folder: Path, stem: str, dpi: int = 130) -> None:
        self.folder, self.stem, self.dpi = folder, stem, dpi
        self.written: list[Path] = []

    def embed(self, fig: Figure | None, name: str, caption: str = "") -> str:
        if fig is None:
            return ""
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=self.dpi, facecolor="white")
        data = buf.getvalue()
        path = self.folder / f"{self.stem}-{slug(name)}.png"
        path.write_bytes(data)
        self.written.append(path)
        encoded = base64.b64encode(data).decode("ascii")
        text = f"{esc(caption)} " if caption else ""
        return (f'<figure><img class="chart" alt="{esc(name)}" src="data:image/png;base64,{encoded}">'
                f'<figcaption>{text}(<a href="{esc(path.name)}">{esc(path.name)}</a>)</figcaption></figure>')


def frame(title: str, subtitle: str, nav: list[tuple[str, str]], body: str) -> str:
    """The whole page: inline style and script, no external resource of any kind."""
    links = "".join(f'<a href="#{esc(anchor)}">{esc(label)}</a>' for anchor, label in nav)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>"
            f"<header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header>"
            f"<nav>{links}</nav><main>{body}</main><script>{SCRIPT}</script></body></html>\n")


def section(anchor: str, heading: str, content: str) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(heading)}</h2>{content}</section>'
