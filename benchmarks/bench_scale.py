"""Scale ladder: gossip runs of 1k, 5k, 10k and 20k nodes, one worker process per core, with peak memory
and its projection to 100,000 nodes.

Usage: .venv/bin/python benchmarks/bench_scale.py [--quick] [--sizes N ...] [--per-process P] [--timeout S]
Writes benchmarks/results/scale.json (scale-quick.json with --quick) and prints a table.

Each rung is `dsim launch --algorithm gossip --topology regular --set graph.degree=4 --set gossip.dim=10
--set rounds=5`, packed ceil(N / cores) nodes per process unless --per-process says otherwise, so the
number of processes stays the same up the ladder and the memory line's slope is the cost of a node.
Memory is the peak sum of PSS (fork-shared pages counted once) and of RSS over the launcher's process
tree. The ladder stops at the first failure, which is kept with its error line, and before a rung whose
memory, projected from the rungs done, would not fit in what the machine has free.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from bench_runtime import fresh_dir, gossip_args, machine_facts, run_dsim
from results_file import git_commit, write_results  # benchmarks/ is the script's folder

ROOT = Path(__file__).resolve().parents[1]
TARGET_NODES = 100_000
TARGET_MEMORY_GIB = 128  # the machine a 100k-node run is meant for
ROUNDS = 5


def per_process_for(nodes: int) -> int:
    """As many worker processes as cores: more would only share the cores, fewer would leave some idle."""
    return math.ceil(nodes / (os.cpu_count() or 1))


def rung(tmp: Path, nodes: int, per_process: int, timeout: float) -> dict[str, Any]:
    run = run_dsim(fresh_dir(tmp, f"scale-{nodes}"), gossip_args(nodes, per_process, ROUNDS), timeout=timeout)
    timings = run["timings"]
    return {
        "nodes": nodes, "nodes_per_process": per_process, "worker_processes": math.ceil(nodes / per_process),
        "exit_code": run["exit_code"], "status": run["status"], "error": run["error"],
        "startup_s": timings.get("startup_s"), "run_s": timings.get("run_s"), "wall_s": timings.get("wall_s"),
        "command_wall_s": run["command_wall_s"], "cpu_s": run["cpu_s"],
        "peak_rss_mb": run["peak_rss_mb"], "peak_pss_mb": run["peak_pss_mb"], "processes": run["processes"],
        "pss_kib_per_node": round(run["peak_pss_mb"] * 1024 / nodes, 1),
        "max_error": run["results"].get("max_error"),
    }


def memory_line(done: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Least-squares line through the completed rungs' peak PSS: its slope is the marginal cost of a node,
    its intercept what the processes cost with no nodes. None below two distinct sizes."""
    xs, ys = [r["nodes"] for r in done], [r["peak_pss_mb"] for r in done]
    if len(set(xs)) < 2:
        return None
    slope, intercept = statistics.linear_regression(xs, ys)
    projected_gib = (intercept + slope * TARGET_NODES) / 1024
    return {"marginal_pss_kib_per_node": round(slope * 1024, 2), "intercept_pss_mb": round(intercept, 1),
            "fitted_on_nodes": xs, f"projected_pss_gib_at_{TARGET_NODES}": round(projected_gib, 2),
            f"fits_{TARGET_MEMORY_GIB}_gib": projected_gib < TARGET_MEMORY_GIB}


def ladder(tmp: Path, sizes: list[int], per_process: int | None, timeout: float) -> dict[str, Any]:
    """Climb the sizes until the first failure (kept) or a rung that would not fit in free memory."""
    runs: list[dict[str, Any]] = []
    stopped = None
    for nodes in sizes:
        line = memory_line(runs)  # every run so far completed
        free_mb = psutil.virtual_memory().available / 2**20
        if line:
            need_mb = line["intercept_pss_mb"] + line["marginal_pss_kib_per_node"] / 1024 * nodes
            if need_mb > free_mb:
                stopped = f"{nodes} nodes would need ~{need_mb:.0f} MB, {free_mb:.0f} MB is free"
                break
        runs.append(rung(tmp, nodes, per_process or per_process_for(nodes), timeout))
        print(f"{nodes} nodes: {runs[-1]['status']} in {runs[-1]['command_wall_s']:.1f} s", flush=True)
        if runs[-1]["exit_code"] != 0:
            stopped = f"{nodes} nodes failed: {runs[-1]['error']}"
            break
    done = [r for r in runs if r["exit_code"] == 0]
    return {"largest_completed_nodes": max((r["nodes"] for r in done), default=None), "stopped": stopped,
            "not_run": sizes[len(runs):], "memory": memory_line(done), "runs": runs}


def print_table(report: dict[str, Any]) -> None:
    machine = report["machine"]
    print(f"\nmachine: {machine['cpu_count']} CPUs, {machine['memory_gb']} GB; gossip, regular degree 4, "
          f"dim 10, {ROUNDS} rounds")
    print(f"{'nodes':>7}{'per proc':>9}{'status':>11}{'startup s':>10}{'run s':>8}{'wall s':>8}{'launch s':>9}"
          f"{'RSS MB':>9}{'PSS MB':>9}{'PSS KiB/node':>13}")
    for r in report["runs"]:
        def num(key: str, fmt: str, r: dict[str, Any] = r) -> str:
            return "-" if r[key] is None else format(r[key], fmt)
        print(f"{r['nodes']:>7}{r['nodes_per_process']:>9}{r['status']:>11}{num('startup_s', '.2f'):>10}"
              f"{num('run_s', '.2f'):>8}{num('wall_s', '.2f'):>8}{r['command_wall_s']:>9.1f}"
              f"{r['peak_rss_mb']:>9.0f}{r['peak_pss_mb']:>9.0f}{r['pss_kib_per_node']:>13.1f}")
        if r["error"]:
            print(f"    error: {r['error'][:160]}")
    if report["stopped"]:
        not_run = f"; not run: {report['not_run']}" if report["not_run"] else ""
        print(f"stopped: {report['stopped'][:160]}{not_run}")
    line = report["memory"]
    if line is None:
        print("memory line: needs two completed sizes")
        return
    projected = line[f"projected_pss_gib_at_{TARGET_NODES}"]
    print(f"memory line through {line['fitted_on_nodes']}: {line['intercept_pss_mb']:.0f} MB + "
          f"{line['marginal_pss_kib_per_node']:.1f} KiB/node -> {projected:.1f} GiB at {TARGET_NODES} nodes "
          f"({'fits' if line[f'fits_{TARGET_MEMORY_GIB}_gib'] else 'does not fit'} in {TARGET_MEMORY_GIB} GiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke version: 200 and 1000 nodes")
    parser.add_argument("--sizes", type=int, nargs="+", metavar="N", help="node counts to climb instead")
    parser.add_argument("--per-process", type=int, metavar="P",
                        help="nodes per process at every rung (default: ceil(N / cores))")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds a rung may take (default 600)")
    args = parser.parse_args()
    sizes = args.sizes or ([200, 1000] if args.quick else [1000, 5000, 10000, 20000])
    report: dict[str, Any] = {"machine": machine_facts(), "quick": args.quick, "commit": git_commit(),
                              "algorithm": "gossip", "topology": "regular degree 4", "dim": 10, "rounds": ROUNDS,
                              "timeout_s": args.timeout}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dsim-scale-") as tmp:
        report.update(ladder(Path(tmp), sorted(sizes), args.per_process, args.timeout))
    report["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report["benchmark_wall_s"] = round(time.perf_counter() - started, 1)
    out = write_results("scale-quick" if args.quick else "scale", report)
    print_table(report)
    print(f"\nwritten to {out.relative_to(ROOT)} in {report['benchmark_wall_s']:.0f} s")


if __name__ == "__main__":
    main()
