"""`dsim topology`: build a topology (or read an edge file), summarise it, draw it, save it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from dsim.errors import DsimError
from dsim.topologies import TOPOLOGIES, build, draw, summary, write_edges


@click.command()
@click.argument("name_or_file", metavar="NAME_OR_FILE")
@click.option("--nodes", type=int, default=None, help="Worker nodes (a file's own node count wins).")
@click.option("--server", is_flag=True, help="Add rank 0 as the server (a star always has one).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random topologies.")
@click.option("--degree", type=int, default=None, help="regular: degree of every node [4].")
@click.option("--k", "k", type=int, default=None, help="small-world: ring neighbours, even [4].")
@click.option("--rewire", type=float, default=None, help="small-world: rewiring probability [0.1].")
@click.option("--p", "p", type=float, default=None, help="erdos-renyi: edge probability [auto: 2 ln n / n].")
@click.option("--rows", type=int, default=None, help="grid/torus: rows [most square].")
@click.option("--draw", "draw_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write a PNG drawing here.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--save", "save_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write a DecentralizePy edge-list file here.")
def topology(
    name_or_file: str,
    nodes: int | None,
    server: bool,
    seed: int,
    degree: int | None,
    k: int | None,
    rewire: float | None,
    p: float | None,
    rows: int | None,
    draw_path: Path | None,
    as_json: bool,
    save_path: Path | None,
) -> None:
    """Summarise topology NAME_OR_FILE: one of star, ring, full, regular, small-world,
    erdos-renyi, grid, torus, or the path of an edge-list file (first line: node count,
    then one 'u v' edge per line)."""
    given = {"degree": degree, "k": k, "rewire": rewire, "p": p, "rows": rows}
    params = {key: value for key, value in given.items() if value is not None}
    named = name_or_file in TOPOLOGIES
    if named and nodes is None:
        raise DsimError(f"--nodes is required for topology {name_or_file!r}")
    graph = build(name_or_file, nodes if nodes is not None else 0, with_server=server, seed=seed, params=params)
    info = summary(graph)
    notes = []
    if not named and nodes is not None and nodes != info["workers"]:
        notes.append(f"note: the file has {info['nodes']} nodes; --nodes {nodes} ignored")
    if save_path is not None:
        write_edges(graph, save_path)
        notes.append(f"saved edges to {save_path}")
    if draw_path is not None:
        draw(graph, draw_path)
        notes.append(f"drew {draw_path}")
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        click.echo(_readable(info))
    for note in notes:
        click.echo(note, err=as_json or note.startswith("note:"))


def _readable(info: dict[str, Any]) -> str:
    server = "no server" if info["server"] is None else f"server = rank {info['server']}"
    degree = info["degree"]
    gap = info["spectral_gap"]
    params = ", ".join(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}" for key, value in info["params"].items())
    rows = [
        ("topology", info["name"] + (f" ({info['source']})" if "source" in info else "")),
        ("nodes", f"{info['nodes']} ({info['workers']} workers, {server})"),
        ("edges", str(info["edges"])),
        ("degree", f"min {degree['min']}, mean {degree['mean']:.2f}, max {degree['max']}"),
        ("diameter", "skipped (too many nodes)" if info["diameter"] is None else str(info["diameter"])),
        ("spectral gap", "skipped (too many nodes)" if gap is None else f"{gap:.4g} (Metropolis-Hastings weights)"),
        ("params", params or "-"),
        ("sha256", info["hash"]),
    ]
    return "\n".join(f"{label:<13} {value}" for label, value in rows)
