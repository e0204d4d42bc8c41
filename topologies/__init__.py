"""Graph topologies for dsim: builders, DecentralizePy edge files, summaries and drawings.

Every graph has nodes 0..n-1 (the ranks), is connected, and carries ``graph.graph["name"]``
and ``graph.graph["server"]`` (the server's rank or None). Import as ``dsim.topologies``.
"""

from .analysis import draw, graph_hash, metropolis_hastings_weights, spectral_gap, summary
from .builders import TOPOLOGIES, build
from .edgefile import TopologyError, read_edges, validate, write_edges

__all__ = [
    "TOPOLOGIES",
    "TopologyError",
    "build",
    "draw",
    "graph_hash",
    "metropolis_hastings_weights",
    "read_edges",
    "spectral_gap",
    "summary",
    "validate",
    "write_edges",
]
