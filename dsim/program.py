"""What a node program declares: its roles side by side, whether it needs a server, data, or torch."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import networkx as nx

from dsim.node import Node
from dsim.options import Options


def server_result(results: Mapping[int, dict[str, Any]], graph: nx.Graph) -> dict[str, Any]:
    """Default summary: what the server returned, if there is a server."""
    server = graph.graph.get("server")
    return dict(results.get(server) or {}) if server is not None else {}


@dataclass(frozen=True)
class Program:
    name: str
    roles: Mapping[str, type[Node]]
    needs_server: bool = False
    uses_data: bool = False
    options: type[Options] | None = None  # the program's option table (typed, validated before launch)
    table: str = ""  # its name in the config (default: the program's name); programs may share one
    summarize: Callable[[Mapping[int, dict[str, Any]], nx.Graph], dict[str, Any]] = server_result

    @property
    def options_table(self) -> str:
        return self.table or self.name

    def role_of(self, rank: int, graph: nx.Graph) -> str:
        """'server' for the graph's server when the program has one; otherwise the single peer role."""
        if "server" in self.roles and rank == graph.graph.get("server"):
            return "server"
        others = [r for r in self.roles if r != "server"]
        return others[0]

    def data_part(self, rank: int, graph: nx.Graph) -> int | None:
        """Which partition part a rank holds: clients in rank order; the server holds none."""
        server = graph.graph.get("server") if self.needs_server else None
        if rank == server:
            return None
        return rank - 1 if server == 0 else rank

    def num_parts(self, graph: nx.Graph) -> int:
        return graph.number_of_nodes() - (1 if self.needs_server else 0)
