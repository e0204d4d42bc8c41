"""The [graph] table: parameters of the random and shaped topologies, declared once.

The builders take these keys as a plain mapping (`build(..., params=...)`), and their defaults are this
table's, so `dsim topology`, `dsim launch` and the Python API agree without writing them twice.
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from dsim.options import Options


class GraphOptions(Options):
    """Parameters of the topology builders (each topology reads only its own)."""

    degree: Annotated[int, Meta(ge=1, description="regular: degree of every node")] = 4
    k: Annotated[int, Meta(ge=2, description="small-world: ring neighbours of each node (even)")] = 4
    rewire: Annotated[float, Meta(ge=0, le=1, description="small-world: rewiring probability")] = 0.1
    p: Annotated[float, Meta(ge=0, le=1, description="erdos-renyi: edge probability; 0 = 2 ln(n) / n")] = 0.0
    rows: Annotated[int, Meta(ge=0, description="grid/torus: rows; 0 = the most square shape")] = 0
