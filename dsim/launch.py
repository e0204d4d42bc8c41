"""`dsim launch`: resolve the experiment, fork this machine's workers, coordinate or follow, write results.

Workers are forked before any ZeroMQ context exists in the launcher, so they start in milliseconds and
share the already-imported modules and loaded dataset copy-on-write. Machine 0 coordinates; the other
machines of a hosts file follow it. Whatever happens, every worker is reaped before the launcher returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import multiprocessing
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx

from dsim import hosts as hostfile
from dsim import secure
from dsim.churn import Conditions
from dsim.config import Config, fingerprint, parse_port_range
from dsim.console import Console
from dsim.coordinator import Coordinator, Outcome
from dsim.devices import check_device
from dsim.errors import DsimError
from dsim.follower import follow
from dsim.hosting import link_table, node_conditions
from dsim.links import LinkTable
from dsim.options import to_dict
from dsim.plan import LocalProc, WorkerPlan, plan_workers
from dsim.program import Program
from dsim.programs import load_program
from dsim.results import (
    bandwidth_rows,
    closing_table,
    make_run_dir,
    result_lines,
    write_bandwidth,
    write_config,
    write_summary,
)
from dsim.topologies import build, graph_hash
from dsim.worker import WorkerSpec, run_worker


def build_graph(cfg: Config, program: Program) -> nx.Graph:
    return build(cfg.topology, cfg.nodes, with_server=program.needs_server, seed=cfg.seed,
                 params=to_dict(cfg.graph))


def _resolve_ip(host: str) -> str:
    try:
        return socket.gethostbyname(host)
    except OSError:
        raise DsimError(f"cannot resolve host '{host}'") from None


def _check_port_range(host: str, text: str, needed: int) -> None:
    """Refuse up front when the configured port range cannot hold this machine's worker processes
    (one port each, shared by the nodes it hosts)."""
    rng = parse_port_range(text)
    if rng is None:
        return
    free = 0
    for port in range(rng[0], rng[1] + 1):
        with socket.socket() as s:
            try:
                s.bind((host, port))
                free += 1
            except OSError:
                continue
        if free >= needed:
            return
    raise DsimError(f"port range {text} has {free} free ports on {host} but {needed} worker processes need one each; "
                    f"choose another --set net.ports=LO-HI")


def _check_master_port(host: str, port: int) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            raise DsimError(f"coordinator port {port} on {host} is in use; choose another with "
                            f"--set net.master_port=N") from None


def _fork_workers(plans: list[WorkerPlan], base: dict[str, Any]) -> list[LocalProc]:
    # Everything the launcher holds (the graph, the config, the program, modules) goes to the workers
    # by fork, shared until written. Out of the cyclic collector's reach, it stays shared: a collection
    # in a worker would otherwise write to every object's header and copy every page it sits on.
    gc.freeze()
    ctx = multiprocessing.get_context("fork")
    threads = max(1, (os.cpu_count() or 1) // max(1, len(plans)))
    procs = []
    try:
        for plan in plans:
            spec = WorkerSpec(name=plan.name, ranks=plan.ranks, threads=threads, **base)
            proc = ctx.Process(target=run_worker, args=(spec,), name=f"dsim-{plan.name}", daemon=False)
            proc.start()
            procs.append(LocalProc(plan.name, plan.ranks, proc))
    finally:
        gc.unfreeze()  # the launcher's own garbage stays collectable (a sweep launches run after run)
    return procs


@contextlib.contextmanager
def _ctrl_c_held() -> Iterator[list[int]]:
    """Hold Ctrl-C while forking and until the coordinator's loop takes it: a KeyboardInterrupt raised
    inside fork's at-fork hooks is printed and swallowed (the run would go on), one raised between two
    forks loses the workers already forked, and one raised while the loop starts leaves the workers
    waiting for a coordinator that is gone. The presses are collected in the yielded list; the
    coordinator takes them over (and stops the run as interrupted); any left are raised again here."""
    pressed: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: pressed.append(signum))
    try:
        yield pressed
    finally:
        signal.signal(signal.SIGINT, previous)
    if pressed:
        signal.raise_signal(signal.SIGINT)  # to the handler that was there: KeyboardInterrupt as a rule


def _reap(procs: list[LocalProc], grace: float = 10.0) -> None:
    """Wait for workers to exit on their own, then terminate, then kill: nothing is left behind."""
    deadline = time.monotonic() + grace
    for p in procs:
        p.process.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.process.is_alive():
            p.process.terminate()
    for p in procs:
        p.process.join(2.0)
        if p.process.is_alive():
            p.process.kill()
            p.process.join(2.0)


@dataclass(frozen=True)
class LaunchPlan:
    """Everything decided before a process starts: what `--dry-run` prints and `launch` carries out."""

    cfg: Config
    program: Program
    graph: nx.Graph
    machines: list[hostfile.Machine]
    me: int
    host_ip: str
    workers: list[WorkerPlan]
    links: LinkTable | None = None  # the emulated links (None: all ideal), checked against the graph
    conditions: Conditions | None = None  # churn schedules and straggler factors (None: neither)
    key: secure.RunKey | None = None  # the run key (None: plain sockets); never printed or written

    @property
    def mine(self) -> list[WorkerPlan]:
        return [w for w in self.workers if w.machine == self.me]


def plan_launch(cfg: Config, hosts: hostfile.HostSource | None = None, machine_rank: int | None = None,
                shipped_key: secure.RunKey | None = None, ships_keys: bool = False) -> LaunchPlan:
    """Build the graph and lay its ranks out on machines and worker processes; check ports and hosts,
    and find the run key (`shipped_key`: sent by the SSH launcher; `ships_keys`: this is that launcher)."""
    program = load_program(cfg.algorithm)
    check_device(cfg.device, cfg.gpus)
    graph = build_graph(cfg, program)
    links = link_table(cfg, program, graph)  # a bad links file is refused here, before any fork
    node_cond = node_conditions(cfg, program, graph)  # and a bad churn trace
    world = graph.number_of_nodes()
    if hosts:
        machines = hostfile.layout(hostfile.entries(hosts, world), world)
        if machine_rank is not None and not 0 <= machine_rank < len(machines):
            raise DsimError(f"--machine-rank {machine_rank} is outside the hosts file's 0..{len(machines) - 1}")
        me = machine_rank if machine_rank is not None else hostfile.detect_machine(machines)
    else:
        machines = [hostfile.Machine(0, cfg.net.host, world, 0)]
        me = 0
    host_ip = _resolve_ip(machines[me].host)
    if hosts:
        hostfile.check_local(machines, me, host_ip)
    workers = plan_workers(machines, cfg.nodes_per_process)
    _check_port_range(host_ip, cfg.net.ports, sum(w.machine == me for w in workers))
    if hosts and me == 0:
        _check_master_port(host_ip, cfg.net.master_port)
    key = secure.run_key(cfg.net.secure, cfg.net.key_file, len(machines), shipped_key, ships_keys)
    return LaunchPlan(cfg, program, graph, machines, me, host_ip, workers, links, conditions=node_cond, key=key)


def launch(cfg: Config, hosts: hostfile.HostSource | None = None, machine_rank: int | None = None,
           quiet: bool = False, key: secure.RunKey | None = None) -> tuple[int, Path]:
    """Run one experiment on this machine's share of the graph; returns (exit code, run directory).

    `key`: the run key machine 0's SSH launcher sent (dsim.ssh.receive)."""
    console = Console(quiet=quiet)
    plan = plan_launch(cfg, hosts, machine_rank, shipped_key=key)
    program, graph, machines, me, plans = plan.program, plan.graph, plan.machines, plan.me, plan.workers
    ghash = graph_hash(graph)
    if plan.links is not None and plan.links.digest:  # machines must read the same links file, too
        ghash = f"{ghash}+links:{plan.links.digest}"
    tmpdir = None
    if hosts:
        master = f"tcp://{_resolve_ip(machines[0].host)}:{cfg.net.master_port}"
    else:
        tmpdir = tempfile.mkdtemp(prefix="dsim-")
        master = f"ipc://{tmpdir}/control"
    if "torch" in sys.modules:
        # An OpenMP pool started in the launcher does not survive fork (children deadlock in their
        # first parallel op): the launcher stays single-threaded and each worker sizes its own pool.
        sys.modules["torch"].set_num_threads(1)
    if program.uses_data:
        # Fail fast on missing files, and load once here so the forked workers share the tensors.
        from dsim.data import load_dataset

        data = cfg.data
        load_dataset(data.dataset, data.data_dir or None, download=data.download, seed=cfg.seed)
    run_dir = make_run_dir(cfg.out, cfg.algorithm, me)
    write_config(run_dir, cfg)
    t0 = time.time()
    base = dict(control=master, host=plan.host_ip, run_dir=run_dir, config=cfg, graph=graph, program=program,
                t0=t0, first_rank=machines[me].first_rank, links=plan.links, conditions=plan.conditions,
                key=plan.key)
    procs: list[LocalProc] = []
    try:
        with _ctrl_c_held() as pressed:
            procs = _fork_workers(plan.mine, base)
            console.say(f"dsim: {cfg.algorithm} on {graph.graph.get('name', cfg.topology)} with "
                        f"{graph.number_of_nodes()} nodes in {len(plans)} processes; results in {run_dir}")
            if me == 0:
                coordinator = Coordinator(cfg, ghash, secrets.token_hex(4), [master], plans, len(machines), procs,
                                          console, plan.key, pressed)
                outcome, summary = asyncio.run(_coordinate(coordinator, cfg, program, graph, machines, run_dir))
        if me != 0:
            outcome, summary = asyncio.run(follow(cfg, ghash, me, master, procs, console, plan.key))
    finally:
        _reap(procs)
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)
    rows = summary.get("bandwidth", [])
    if rows:
        write_bandwidth(run_dir, rows)
    write_summary(run_dir, {k: v for k, v in summary.items() if k != "bandwidth"})
    _report(console, outcome, summary, rows, quiet)
    return {"ok": 0, "refused": 2, "interrupted": 130}.get(outcome.status, 1), run_dir


async def _coordinate(coordinator: Coordinator, cfg: Config, program: Program, graph: nx.Graph,
                      machines: list[hostfile.Machine], run_dir: Path) -> tuple[Outcome, dict[str, Any]]:
    outcome = await coordinator.run()
    if coordinator.refused:
        reasons = "; ".join(f"{n} x {why}" for why, n in coordinator.refused.most_common())
        outcome.warnings.append(f"{coordinator.refused.total()} connections to the coordinator were refused: "
                                f"{reasons}")
    roles = {r: program.role_of(r, graph) for r in graph.nodes}
    host_of = {r: m.host for m in machines for r in m.ranks}
    rows = bandwidth_rows(outcome.traffic, roles, host_of)
    try:
        results = program.summarize(outcome.results, graph) if outcome.status == "ok" else {}
    except Exception as exc:  # a summarize bug must not lose the per-node results
        results = {"summarize_error": f"{type(exc).__name__}: {exc}"}
    results["per_node"] = {str(r): outcome.results[r] for r in sorted(outcome.results)}
    summary = {
        "status": outcome.status,
        "failures": outcome.failures,
        "warnings": outcome.warnings,
        "algorithm": cfg.algorithm,
        "topology": graph.graph.get("name", cfg.topology),
        "nodes": graph.number_of_nodes(),
        "server": graph.graph.get("server"),
        "run_id": coordinator.run_id,
        "secure": coordinator.key is not None,
        "run_dir": str(run_dir),
        "config_fingerprint": fingerprint(cfg, graph_hash(graph)),
        "data_fingerprint": outcome.data_fingerprint,
        "wall_time_s": round(outcome.timings.get("wall_s", 0.0), 3),
        "timings": {k: round(v, 3) for k, v in outcome.timings.items()},
        "results": results,
        "devices": {str(r): outcome.devices[r] for r in sorted(outcome.devices)},
        "bandwidth": rows,
    }
    await coordinator.close(summary)
    return outcome, summary


def _report(console: Console, outcome: Outcome, summary: dict[str, Any], rows: list[dict[str, Any]],
            quiet: bool) -> None:
    if rows and not quiet:
        print(closing_table(rows))
    results = {k: v for k, v in summary.get("results", {}).items() if k != "per_node"}
    if results and not quiet:
        print("\n".join(["results:", *result_lines(results)]))
    for warning in outcome.warnings:
        console.say(f"dsim: warning: {warning}")
    for failure in outcome.failures:
        console.error(f"dsim: error: {failure['reason']}")
    if outcome.status == "ok":
        console.say(f"dsim: finished in {summary.get('wall_time_s', 0):.1f} s; results in {summary.get('run_dir')}")

