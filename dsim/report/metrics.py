"""The program's `metric` events as series: one per (phase, quantity), points per node.

Programs log what they like (`self.log(round=r, accuracy=...)`, `phase="distill", step=s, loss=...`);
every numeric field that is not bookkeeping becomes a quantity, and `round` or `step` its x axis.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Fields that say where or how much rather than how well.
BOOKKEEPING = {"t", "rank", "event", "phase", "round", "step", "client", "clients", "replies",
               "neighbours_heard", "progress_sent", "images", "kept", "num_eval_models"}


@dataclass
class Series:
    """One quantity of one phase: per node (or per client the server logs for), its points."""

    phase: str
    quantity: str
    x_name: str  # "round", "step", or "" when only time is known
    points: dict[int, list[tuple[float, float, float]]] = field(default_factory=dict)  # node -> (x, t, y)

    @property
    def label(self) -> str:
        return f"{self.phase} {self.quantity}" if self.phase else self.quantity

    @property
    def length(self) -> int:
        return max((len(p) for p in self.points.values()), default=0)

    def arrays(self, node: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pts = sorted(self.points[node], key=lambda p: p[1])
        x, t, y = (np.array(v, dtype=float) for v in zip(*pts, strict=True))
        return x, t, y

    def mean_curve(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(x, mean t, mean y) over nodes at each x: what overlaid comparisons draw."""
        by_x: dict[float, list[tuple[float, float]]] = defaultdict(list)
        for pts in self.points.values():
            for x, t, y in pts:
                by_x[x].append((t, y))
        xs = np.array(sorted(by_x), dtype=float)
        t = np.array([np.mean([p[0] for p in by_x[x]]) for x in xs])
        y = np.array([np.nanmean([p[1] for p in by_x[x]]) for x in xs])
        return xs, t, y


def metric_series(events: list[dict[str, Any]]) -> list[Series]:
    """Series with at least two points on some node (a single evaluation is a result, not a curve),
    accuracy first, then losses, then the rest."""
    found: dict[tuple[str, str], Series] = {}
    for e in events:
        if e.get("event") != "metric":
            continue
        phase = str(e.get("phase", ""))
        x_name = "round" if "round" in e else "step" if "step" in e else ""
        owner = int(e["client"]) if isinstance(e.get("client"), int) else int(e.get("rank", -1))
        t = float(e.get("t", np.nan))
        for key, value in e.items():
            if key in BOOKKEEPING or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            s = found.setdefault((phase, key), Series(phase, key, x_name))
            x = float(e[x_name]) if x_name else float(len(s.points.get(owner, [])))
            s.points.setdefault(owner, []).append((x, t, float(value)))
    series = [s for s in found.values() if s.length >= 2]
    return sorted(series, key=lambda s: (_rank(s.quantity), s.phase, s.quantity))


def _rank(quantity: str) -> int:
    q = quantity.lower()
    return 0 if "acc" in q else 1 if "loss" in q else 2


def headline(results: dict[str, Any]) -> dict[str, float]:
    """A run's top-level numeric results (accuracy_mean, mean_error, ...), not per-node detail."""
    return {k: float(v) for k, v in results.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and k != "finished_t"}
