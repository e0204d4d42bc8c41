"""`dsim launch --dry-run`: resolve, validate, build the graph and the partition, print the plan, exit.

Everything a run would refuse is refused here too (it calls the same planning code), and nothing
is forked, bound or written.
"""

from __future__ import annotations

import click

from dsim.config import Config, fingerprint
from dsim.launch import LaunchPlan, plan_launch
from dsim.plan import format_ranks
from dsim.topologies import graph_hash


def dry_run(cfg: Config, hosts: str | None = None, machine_rank: int | None = None,
            ships_keys: bool = False) -> None:
    """Print what `dsim launch` would run with this config, without running it (`ships_keys`: the SSH
    launcher would start the machines and carry the run key)."""
    plan = plan_launch(cfg, hosts, machine_rank, ships_keys=ships_keys)
    for line in describe(plan):
        click.echo(line)


def describe(plan: LaunchPlan) -> list[str]:
    cfg, graph, program = plan.cfg, plan.graph, plan.program
    server = graph.graph.get("server") if program.needs_server else None
    roles: dict[str, list[int]] = {}
    for rank in graph.nodes:
        roles.setdefault(program.role_of(rank, graph), []).append(rank)
    lines = [
        f"dsim: dry run of {cfg.algorithm} (config fingerprint {fingerprint(cfg, graph_hash(graph))}); "
        f"nothing is started",
        f"graph: {graph.graph.get('name', cfg.topology)}, {graph.number_of_nodes()} nodes, "
        f"{graph.number_of_edges()} edges" + (f", server = rank {server}" if server is not None else ""),
        "roles: " + "; ".join(f"{role} {format_ranks(ranks)}" for role, ranks in sorted(roles.items())),
        f"device: {cfg.device}" + (f" (gpus {cfg.gpus})" if cfg.gpus else ""),
        f"machines: {len(plan.machines)}; this is machine {plan.me} ({plan.host_ip})",
        f"sockets: {'CurveZMQ, run key holders only' if plan.key else 'plain'} (net.secure={cfg.net.secure})",
    ]
    for m in plan.machines:
        workers = [w for w in plan.workers if w.machine == m.index]
        lines.append(f"  machine {m.index} {m.host}: {format_ranks(list(m.ranks))} in {len(workers)} processes")
        for w in workers[:8]:
            lines.append(f"    process {w.name}: {format_ranks(w.ranks)}")
        if len(workers) > 8:
            lines.append(f"    ... {len(workers) - 8} more processes")
    if program.uses_data:
        lines += _partition_lines(plan)
    return lines


def _partition_lines(plan: LaunchPlan) -> list[str]:
    from dsim.data import partition_for
    from dsim.options import to_dict

    cfg, graph, program = plan.cfg, plan.graph, plan.program
    parts_n = program.num_parts(graph)
    ds, parts, fp = partition_for(to_dict(cfg.data), num_parts=parts_n, seed=cfg.seed)
    labels = ds.train_y.numpy()
    lines = [f"data: {ds.name}, partition {cfg.data.partition} into {parts_n} parts "
             f"(fingerprint {fp[:12]}); test set {len(ds.test_y)} images"]
    for rank in sorted(graph.nodes)[:20]:
        part = program.data_part(rank, graph)
        if part is None:
            lines.append(f"  rank {rank}: no train data (holds the test set)")
            continue
        idx = parts[part]
        classes = sorted(set(labels[idx].tolist()))
        lines.append(f"  rank {rank}: {len(idx)} samples, {len(classes)} classes {classes}")
    if graph.number_of_nodes() > 20:
        lines.append(f"  ... {graph.number_of_nodes() - 20} more nodes")
    return lines
