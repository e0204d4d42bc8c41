"""Runtime benchmark: transport throughput beside DecentralizePy and bare pyzmq, start-up time, and the
largest gossip run.

Usage: .venv/bin/python benchmarks/bench_runtime.py [--quick] [--only throughput secure startup largest]
Writes benchmarks/results/runtime.json (runtime-quick.json with --quick; a suffix naming the parts with
--only) and prints a table; part a also writes its dsim-vs-DecentralizePy table as markdown next to it
(transport-vs-decentralizepy.md).

a. 8 nodes on a ring exchange 1 KB and 1 MB messages in lock-step (`--algorithm exchange`) in four
   layouts: one process per node on uvloop (the default) and on asyncio's own loop; 4 nodes per process
   (one process per core; neighbours in a process talk in memory); all 8 in one process. The anchor is
   DecentralizePy's own TCP layer doing the same pattern (../shared/anchor-bench/bench_comm.py, skipped
   where that folder is missing): each repeat of the one-process-per-node and 4-per-process layouts is
   followed straight by an anchor run, and the ratio of the two is kept per repeat, because the speed of
   a shared machine drifts by tens of percent between minutes. Beside them, bare pyzmq doing the same
   pattern in 8 forked processes: with blocking sockets, with zmq.asyncio, and with the loop integration
   of dsim's hub alone (`pyzmq_reader`: uvloop, a reader draining the ROUTER, compiled calls).
   CPU per message is every process's CPU time (all threads) over the rounds, divided by the messages:
   on a shared machine it is steadier than the wall-clock rates.
   Two more rows switch the emulated links on (`links.bandwidth=10Gbit`, no latency: every message
   goes through its link's queue and timer but is hardly delayed), one process per node and all 8 in
   one process: `links_cost_cpu_us_per_msg` is what the link layer adds per message.
s. CurveZMQ's cost: the same 1 KB and 1 MB lock-step exchange, one process per node, with
   `net.secure=on` and `off` alternating run by run (the ratio is kept per pair, as for the anchor).
b. Start-up of gossip runs: summary startup_s and the wall time of the whole `dsim launch` command.
c. Growing gossip runs packed 100 nodes per process until the first failure, with peak memory.
   benchmarks/bench_scale.py climbs further (to 20k nodes, one worker process per core).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import psutil
import zmq
import zmq.asyncio
from results_file import git_commit, write_results  # benchmarks/ is the script's folder

from dsim import native

ROOT = Path(__file__).resolve().parents[1]
DSIM = Path(sys.executable).with_name("dsim")
ANCHOR = ROOT.parent / "shared" / "anchor-bench" / "bench_comm.py"
# the layouts that alternate with the anchor: report key -> (nodes per process, name in the tables)
PAIRED = {"dsim": (1, "one process per node"), "dsim_packed": (4, "4 nodes per process")}


# --- helpers -------------------------------------------------------------------------------------


def machine_facts() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "pyzmq": zmq.__version__,
        "native_io": native.load()[1] or "dsim's compiled module (net.native_io=auto uses it)",
        "libzmq": zmq.zmq_version(),
        "msgpack": ".".join(map(str, msgpack.version)),
        "platform": platform.platform(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def children_cpu() -> float:
    """CPU seconds (user + system) of every reaped descendant so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class MemorySampler:
    """Peak sum of RSS (and of PSS, which counts fork-shared pages once) over a process and its children."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak_rss = self.peak_pss = 0
        self.peak_procs = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return
        rss = pss = 0
        for proc in procs:
            try:
                info = proc.memory_full_info()
            except psutil.Error:
                continue  # exited between the listing and the read
            rss += info.rss
            pss += getattr(info, "pss", info.rss)
        self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
        self.peak_procs = max(self.peak_procs, len(procs))


class _NoSamples:
    peak_rss = peak_pss = peak_procs = 0


_NO_SAMPLES = _NoSamples()


def kill_tree(proc: subprocess.Popen) -> None:
    """Kill a process and all its descendants: an orphaned worker would hold the output pipe open."""
    try:
        descendants = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        descendants = []
    proc.kill()  # reaped by its Popen, which keeps the exit code
    for child in descendants:
        try:
            child.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(descendants, timeout=30)


def fresh_dir(tmp: Path, prefix: str) -> Path:
    """A run directory path that no earlier run used (dsim refuses to overwrite a finished run)."""
    return Path(tempfile.mkdtemp(dir=tmp, prefix=f"{prefix}-")) / "run"


def run_dsim(out: Path, args: list[str], timeout: float = 300.0, memory: bool = True) -> dict[str, Any]:
    """Run `dsim launch` as a user would; returns its summary, command wall time, CPU and peak memory.

    memory=False skips the sampling (peaks then 0): reading every process's PSS five times a second
    walks their page tables under their memory locks, a cost the unsampled anchor runs do not pay."""
    cmd = [str(DSIM), "launch", "--quiet", "--out", str(out), *args]
    cpu0, start = children_cpu(), time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    timed_out = False
    with MemorySampler(proc.pid) if memory else contextlib.nullcontext(_NO_SAMPLES) as mem:
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            kill_tree(proc)
            output, _ = proc.communicate()
    wall = time.perf_counter() - start
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    failures = summary.get("failures") or []
    last = (output.strip().splitlines() or [""])[-1]
    error = "; ".join(f["reason"] for f in failures) or last or f"exit code {proc.returncode}, no output"
    if timed_out:
        error = f"timed out after {timeout:.0f} s" + (f"; last output: {last}" if last else "")
    return {
        "exit_code": proc.returncode,
        "status": "timed out" if timed_out else summary.get("status", "no summary"),
        "error": error if proc.returncode else None,
        "command_wall_s": round(wall, 3),
        "timings": summary.get("timings", {}),
        "results": {k: v for k, v in summary.get("results", {}).items() if k != "per_node"},
        "exchange_cpu_s": sum(float(r.get("process_cpu_s", 0.0))
                              for r in summary.get("results", {}).get("per_node", {}).values() if r),
        "cpu_s": round(children_cpu() - cpu0, 3),
        "peak_rss_mb": round(mem.peak_rss / 2**20, 1),
        "peak_pss_mb": round(mem.peak_pss / 2**20, 1),
        "processes": mem.peak_procs,
    }


# --- bare pyzmq baseline ---------------------------------------------------------------------


def _ring_neighbours(rank: int, n: int) -> list[int]:
    return sorted({(rank - 1) % n, (rank + 1) % n})


BASELINES = ("sync", "asyncio", "reader")


def _baseline_peer(rank: int, n: int, rounds: int, size: int, mode: str, ports: Any, table: Any,
                   results: Any, barrier: Any) -> None:
    """One process: a bound ROUTER, a DEALER per neighbour, raw bytes frames, lock-step rounds."""
    if mode == "asyncio":
        asyncio.run(_baseline_async(rank, n, rounds, size, ports, table, results, barrier))
    elif mode == "reader":
        import uvloop
        uvloop.run(_baseline_reader(rank, n, rounds, size, ports, table, results, barrier))
    else:
        _baseline_sync(rank, n, rounds, size, ports, table, results, barrier)


def _sockets(ctx: zmq.Context, rank: int, n: int, ports: Any, table: Any) -> tuple[Any, dict[int, Any]]:
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.RCVHWM, 0)
    router.setsockopt(zmq.LINGER, 0)
    ports.put((rank, router.bind_to_random_port("tcp://127.0.0.1")))
    addresses = table.get()
    dealers = {}
    for nbr in _ring_neighbours(rank, n):
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, str(rank).encode())
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(f"tcp://127.0.0.1:{addresses[nbr]}")
        dealers[nbr] = sock
    return router, dealers


class _RoundInbox:
    """Counts messages per source so that a round takes exactly one from each neighbour."""

    def __init__(self, neighbours: list[int]) -> None:
        self.neighbours = neighbours
        self.pending: Counter[int] = Counter()
        self.ranks = {str(r).encode(): r for r in neighbours}

    def add(self, identity: bytes) -> None:
        self.pending[self.ranks[identity]] += 1

    def take_round(self) -> bool:
        if all(self.pending[r] for r in self.neighbours):
            for r in self.neighbours:
                self.pending[r] -= 1
            return True
        return False


def _baseline_sync(rank: int, n: int, rounds: int, size: int, ports: Any, table: Any, results: Any,
                   barrier: Any) -> None:
    ctx = zmq.Context()
    router, dealers = _sockets(ctx, rank, n, ports, table)
    inbox = _RoundInbox(list(dealers))
    payload = bytes(size)

    def one_round(frame: bytes) -> None:
        for sock in dealers.values():
            sock.send(frame, copy=size < 65536)
        while not inbox.take_round():
            inbox.add(router.recv_multipart(copy=False)[0].bytes)

    start = time.perf_counter()
    one_round(b"hello")
    setup = time.perf_counter() - start
    barrier.wait()
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(rounds):
        one_round(payload)
    results.put((rank, rounds * len(dealers), time.perf_counter() - start, setup, time.process_time() - cpu))
    barrier.wait()  # nobody closes while a neighbour may still be reading
    for sock in [router, *dealers.values()]:
        sock.close()
    ctx.term()


async def _baseline_async(rank: int, n: int, rounds: int, size: int, ports: Any, table: Any, results: Any,
                          barrier: Any) -> None:
    ctx = zmq.asyncio.Context()
    router, dealers = _sockets(ctx, rank, n, ports, table)
    inbox = _RoundInbox(list(dealers))
    payload = bytes(size)

    async def one_round(frame: bytes) -> None:
        for sock in dealers.values():
            await sock.send(frame, copy=size < 65536)
        while not inbox.take_round():
            inbox.add((await router.recv_multipart(copy=False))[0].bytes)

    start = time.perf_counter()
    await one_round(b"hello")
    setup = time.perf_counter() - start
    barrier.wait()
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(rounds):
        await one_round(payload)
    results.put((rank, rounds * len(dealers), time.perf_counter() - start, setup, time.process_time() - cpu))
    barrier.wait()
    for sock in [router, *dealers.values()]:
        sock.close()
    ctx.term()


async def _baseline_reader(rank: int, n: int, rounds: int, size: int, ports: Any, table: Any, results: Any,
                           barrier: Any) -> None:
    """The loop integration dsim's hub uses, with nothing else: uvloop, one reader on the ROUTER's FD
    that drains it (edge-triggered, ZMQ_EVENTS read), pyzmq's compiled send and recv, a future per
    round. Its CPU per message against pyzmq_sync's shows what the loop integration itself costs."""
    ctx = zmq.Context()
    router, dealers = _sockets(ctx, rank, n, ports, table)
    inbox = _RoundInbox(list(dealers))
    send, recv, get = zmq.backend.Socket.send, zmq.backend.Socket.recv, zmq.backend.Socket.get
    events, pollin, noblock = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.NOBLOCK)
    loop = asyncio.get_running_loop()
    waiting: list[asyncio.Future] = []

    def drain() -> None:
        while get(router, events) & pollin:
            frame = recv(router, noblock, False)
            identity = frame.bytes
            while frame.more:
                frame = recv(router, noblock, False)
            inbox.add(identity)
        if waiting and all(inbox.pending[r] for r in inbox.neighbours):
            waiting.pop().set_result(None)

    loop.add_reader(router.getsockopt(zmq.FD), drain)

    async def one_round(frame: bytes) -> None:
        for sock in dealers.values():
            send(sock, frame, noblock, size < 65536)
        if not inbox.take_round():
            waiting.append(loop.create_future())
            loop.call_soon(drain)
            await waiting[-1]
            assert inbox.take_round()

    start = time.perf_counter()
    await one_round(b"hello")
    setup = time.perf_counter() - start
    barrier.wait()
    start, cpu = time.perf_counter(), time.process_time()
    payload = bytes(size)
    for _ in range(rounds):
        await one_round(payload)
    results.put((rank, rounds * len(dealers), time.perf_counter() - start, setup, time.process_time() - cpu))
    barrier.wait()
    loop.remove_reader(router.getsockopt(zmq.FD))
    for sock in [router, *dealers.values()]:
        sock.close()
    ctx.term()


def run_baseline(n: int, rounds: int, size: int, mode: str) -> dict[str, Any]:
    """The same lock-step ring exchange in n forked processes speaking bare pyzmq (mode: BASELINES)."""
    mp = multiprocessing.get_context("fork")
    ports, results = mp.Queue(), mp.Queue()
    tables = [mp.Queue() for _ in range(n)]
    barrier = mp.Barrier(n)
    start = time.perf_counter()
    procs = [mp.Process(target=_baseline_peer, args=(r, n, rounds, size, mode, ports, tables[r],
                                                     results, barrier)) for r in range(n)]
    for p in procs:
        p.start()
    addresses = dict(ports.get(timeout=60) for _ in range(n))
    for q in tables:
        q.put(addresses)
    rows = [results.get(timeout=600) for _ in range(n)]
    for p in procs:
        p.join()
    msgs = sum(r[1] for r in rows)
    slowest = max(r[2] for r in rows)
    return {
        "msgs": msgs, "seconds": round(slowest, 4),
        "msgs_per_s": round(msgs / slowest, 1), "mb_per_s": round(msgs * size / 1e6 / slowest, 1),
        "connection_setup_s": round(max(r[3] for r in rows), 4),
        "wall_s": round(time.perf_counter() - start, 3),
        "cpu_us_per_msg": round(sum(r[4] for r in rows) / msgs * 1e6, 1),
    }


# --- DecentralizePy anchor -------------------------------------------------------------------


def anchor_facts() -> dict[str, Any]:
    """What the report says about the anchor: where it is, or why it was skipped."""
    if not ANCHOR.exists():
        return {"skipped": f"{ANCHOR.parent} not found (it is not part of dsim)"}
    return {"source": "DecentralizePy's TCP communication layer, unmodified (see its README.md), same ring "
                      "pattern, run right after each dsim run of the same size in this benchmark",
            "script": str(ANCHOR)}


def run_anchor(rounds: int, size: int) -> dict[str, Any]:
    """One run of DecentralizePy's transport: 8 processes on a ring, lock-step, as dsim's exchange."""
    cmd = [sys.executable, str(ANCHOR), "--nodes", "8", "--msgs", str(rounds), "--size", str(size),
           "--mode", "lockstep"]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - start
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        error = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        raise RuntimeError(f"DecentralizePy anchor run failed: {error}")
    res = json.loads(lines[-1])
    return {"msgs": res["msgs_delivered"], "seconds": res["data_wall_s"], "msgs_per_s": res["msgs_per_s"],
            "wire_mb_per_s": res["MB_per_s"], "connection_setup_s": res["setup_s"],
            "command_wall_s": round(wall, 3)}


# --- the three parts -------------------------------------------------------------------------


def best(runs: list[dict[str, Any]], key: str = "msgs_per_s") -> dict[str, Any]:
    """The best of a few repeats: other jobs on a shared machine only ever slow a run down."""
    top = max(runs, key=lambda r: r.get(key) or 0.0)
    values = [r.get(key) for r in runs]
    return {**top, "repeats": values, "median": statistics.median(v or 0.0 for v in values)}


def best_of(repeats: int, fn: Callable[[], dict[str, Any]], key: str = "msgs_per_s") -> dict[str, Any]:
    return best([fn() for _ in range(repeats)], key)


def ratios(dsim_runs: list[dict[str, Any]], anchor_runs: list[dict[str, Any]]) -> dict[str, Any]:
    """dsim's rate over DecentralizePy's, per back-to-back pair (above 1: dsim is faster)."""
    per_repeat = [round(d["msgs_per_s"] / a["msgs_per_s"], 3) for d, a in zip(dsim_runs, anchor_runs, strict=True)]
    return {"dsim_msgs_per_s": [r["msgs_per_s"] for r in dsim_runs],
            "decentralizepy_msgs_per_s": [r["msgs_per_s"] for r in anchor_runs],
            "ratio": per_repeat, "median_ratio": round(statistics.median(per_repeat), 3)}


def throughput(tmp: Path, sizes: dict[str, tuple[int, int]], repeats: int, anchor: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label, (size, rounds) in sizes.items():
        def dsim_run(size: int = size, rounds: int = rounds, per_process: int = 1,
                     loop: str = "auto", links: str = "", io: str = "auto") -> dict[str, Any]:
            return exchange_run(tmp, size, rounds, per_process, loop, links, io=io)

        # dsim run, anchor run, dsim run, anchor run, ...: each ratio compares runs seconds apart
        dsim_runs: dict[str, list[dict[str, Any]]] = {impl: [] for impl in PAIRED}
        anchor_runs: dict[str, list[dict[str, Any]]] = {impl: [] for impl in PAIRED}
        for _ in range(repeats):
            for impl, (per_process, _name) in PAIRED.items():
                dsim_runs[impl].append(dsim_run(per_process=per_process))
                if anchor:
                    anchor_runs[impl].append(run_anchor(rounds, size))
        entry = {"bytes": size, "rounds": rounds, "nodes": 8, "topology": "ring",
                 # one process per node, on uvloop (the default when installed), and 4 nodes per process:
                 # one process per core; ring neighbours in a process talk in memory
                 **{impl: best(runs) for impl, runs in dsim_runs.items()},
                 "dsim_asyncio_loop": best_of(repeats, lambda: dsim_run(loop="asyncio")),
                 # one process per node through pyzmq's calls alone, as without dsim's compiled module
                 "dsim_pyzmq_io": best_of(repeats, lambda: dsim_run(io="off")),
                 # all 8 in one process: every message in memory, one core
                 "dsim_one_process": best_of(repeats, lambda: dsim_run(per_process=8)),
                 # the same two layouts' extremes with every link emulated at 10 Gbit/s, no latency
                 "dsim_links": best_of(repeats, lambda: dsim_run(links="10Gbit")),
                 "dsim_one_process_links": best_of(repeats, lambda: dsim_run(per_process=8, links="10Gbit")),
                 **{f"pyzmq_{mode}": best_of(repeats, lambda s=size, r=rounds, m=mode: run_baseline(8, r, s, m))
                    for mode in BASELINES}}
        if anchor:
            entry["decentralizepy"] = best([run for runs in anchor_runs.values() for run in runs])
            entry["vs_decentralizepy"] = {impl: ratios(dsim_runs[impl], anchor_runs[impl]) for impl in PAIRED}
        entry["dsim_vs_pyzmq_sync"] = round(entry["dsim"]["msgs_per_s"] / entry["pyzmq_sync"]["msgs_per_s"], 3)
        entry["links_cost_cpu_us_per_msg"] = {
            layout: round(entry[f"{base}_links"]["cpu_us_per_msg"] - entry[base]["cpu_us_per_msg"], 1)
            for layout, base in (("process_per_node", "dsim"), ("one_process", "dsim_one_process"))}
        out[label] = entry
    return out


def exchange_run(tmp: Path, size: int, rounds: int, per_process: int = 1, loop: str = "auto", links: str = "",
                 secure: str = "off", io: str = "auto") -> dict[str, Any]:
    """One `dsim launch --algorithm exchange` on a ring of 8: its rates and CPU per message."""
    run = run_dsim(fresh_dir(tmp, "exchange"),
                   ["--algorithm", "exchange", "--topology", "ring", "--nodes", "8",
                    "--nodes-per-process", str(per_process), "--set", f"net.event_loop={loop}",
                    "--set", f"net.native_io={io}",
                    "--set", f"rounds={rounds}", "--set", f"exchange.bytes={size}", "--set", f"net.secure={secure}",
                    *(["--set", f"links.bandwidth={links}"] if links else [])], memory=False)
    res = run["results"]
    if run["exit_code"] != 0 or "msgs_per_s" not in res:
        raise RuntimeError(f"dsim exchange run failed: {run['error']}")
    return {
        "msgs": res["msgs"], "seconds": round(res["seconds"], 4),
        "msgs_per_s": round(res["msgs_per_s"], 1), "mb_per_s": round(res["mb_per_s"], 1),
        "startup_s": run["timings"].get("startup_s"), "command_wall_s": run["command_wall_s"],
        # every node reports its whole process's CPU: count each process once
        "cpu_us_per_msg": round(run["exchange_cpu_s"] / per_process / res["msgs"] * 1e6, 1),
    }


def secure_cost(tmp: Path, sizes: dict[str, tuple[int, int]], repeats: int) -> dict[str, Any]:
    """net.secure=on beside off, one process per node (every message through CurveZMQ), in pairs run
    back to back so that each on/off ratio compares runs seconds apart."""
    out: dict[str, Any] = {}
    for label, (size, rounds) in sizes.items():
        runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
        for _ in range(repeats):
            for mode in runs:
                runs[mode].append(exchange_run(tmp, size, rounds, secure=mode))
        per_repeat = [round(on["msgs_per_s"] / off["msgs_per_s"], 3) for on, off in zip(runs["on"], runs["off"],
                                                                                         strict=True)]
        out[label] = {"bytes": size, "rounds": rounds, "nodes": 8, "topology": "ring", "nodes_per_process": 1,
                      "dsim_plain": best(runs["off"]), "dsim_secure": best(runs["on"]),
                      "secure_over_plain": per_repeat, "median_secure_over_plain": statistics.median(per_repeat),
                      "secure_cost_cpu_us_per_msg": round(best(runs["on"])["cpu_us_per_msg"]
                                                          - best(runs["off"])["cpu_us_per_msg"], 1)}
    return out


def startup(tmp: Path, cases: dict[str, tuple[int, int]], repeats: int) -> dict[str, Any]:
    out = {}
    for label, (nodes, per_process) in cases.items():
        def one(nodes: int = nodes, per_process: int = per_process, label: str = label) -> dict[str, Any]:
            run = run_dsim(fresh_dir(tmp, "startup"), gossip_args(nodes, per_process, rounds=2))
            if run["exit_code"] != 0:
                raise RuntimeError(f"start-up run {label} failed: {run['error']}")
            return {"nodes": nodes, "nodes_per_process": per_process, "startup_s": run["timings"].get("startup_s"),
                    "run_s": run["timings"].get("run_s"), "wall_s": run["timings"].get("wall_s"),
                    "command_wall_s": run["command_wall_s"], "peak_rss_mb": run["peak_rss_mb"],
                    "peak_pss_mb": run["peak_pss_mb"]}

        runs = [one() for _ in range(repeats)]
        best = min(runs, key=lambda r: r["command_wall_s"])
        out[label] = {**best, "repeats_command_wall_s": [r["command_wall_s"] for r in runs]}
    return out


def gossip_args(nodes: int, per_process: int, rounds: int, extra: tuple[str, ...] = ()) -> list[str]:
    args = ["--algorithm", "gossip", "--topology", "regular", "--nodes", str(nodes),
            "--nodes-per-process", str(per_process), "--set", "graph.degree=4",
            "--set", f"rounds={rounds}", "--set", "gossip.dim=10"]
    for setting in extra:
        args += ["--set", setting]
    return args


def largest(tmp: Path, sizes: list[int], per_process: int) -> dict[str, Any]:
    """Grow the gossip run until it fails. A heartbeat time-out is retried once with a longer one,
    because a busy shared machine (not the runtime) can starve a worker's loop past the default."""
    runs, completed = [], None
    for nodes in sizes:
        for extra in ((), ("net.heartbeat_timeout=60",)):
            run = run_dsim(fresh_dir(tmp, f"scale-{nodes}"), gossip_args(nodes, per_process, 5, extra),
                           timeout=600)
            runs.append({"nodes": nodes, "nodes_per_process": per_process, "settings": list(extra),
                         **{k: run[k] for k in ("exit_code", "status", "error", "command_wall_s", "timings",
                                                "cpu_s", "peak_rss_mb", "peak_pss_mb", "processes")},
                         "max_error": run["results"].get("max_error")})
            if run["exit_code"] == 0 or "heartbeat" not in (run["error"] or ""):
                break
        if runs[-1]["exit_code"] != 0:
            break
        completed = nodes
    return {"largest_completed_nodes": completed, "topology": "regular degree 4", "rounds": 5, "dim": 10,
            "runs": runs}


# --- report ----------------------------------------------------------------------------------


IMPLEMENTATIONS = ("dsim", "dsim_asyncio_loop", "dsim_pyzmq_io", "dsim_packed", "dsim_one_process", "dsim_links",
                   "dsim_one_process_links", "pyzmq_sync", "pyzmq_asyncio", "pyzmq_reader", "decentralizepy")
PARTS = ("throughput", "secure", "startup", "largest")


def _size_name(nbytes: int) -> str:
    return f"{nbytes >> 20} MB" if nbytes >= 1 << 20 else f"{nbytes >> 10} KB"


def ratio_rows(throughput: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(row name, ratios) for every size and paired layout, as the ratio tables show them."""
    return [(f"{_size_name(entry['bytes'])}, {name}", entry["vs_decentralizepy"][impl])
            for entry in throughput.values() for impl, (_per_process, name) in PAIRED.items()]


def print_table(report: dict[str, Any]) -> None:
    print(f"machine: {report['machine']['cpu_count']} CPUs, python {report['machine']['python']}, "
          f"pyzmq {report['machine']['pyzmq']} / libzmq {report['machine']['libzmq']}")
    if "throughput" in report:
        _print_throughput(report)
    if "secure" in report:
        print(f"\n{'CurveZMQ, ring of 8':<32}{'msgs/s':>10}{'median':>10}{'MB/s':>9}{'CPU us/msg':>12}"
              f"{'on/off':>8}")
        for label, entry in report["secure"].items():
            for impl in ("dsim_plain", "dsim_secure"):
                r = entry[impl]
                ratio = f"{entry['median_secure_over_plain']:.2f}" if impl == "dsim_secure" else ""
                print(f"{label + ' ' + impl:<32}{r['msgs_per_s']:>10.0f}{r['median']:>10.0f}{r['mb_per_s']:>9.1f}"
                      f"{r['cpu_us_per_msg']:>12.1f}{ratio:>8}")
    if "startup" in report:
        print(f"\n{'start-up (gossip)':<22}{'startup_s':>10}{'launch wall s':>15}{'RSS MB':>9}{'PSS MB':>9}")
        for label, r in report["startup"].items():
            print(f"{label:<22}{r['startup_s']:>10.3f}{r['command_wall_s']:>15.2f}{r['peak_rss_mb']:>9.0f}"
                  f"{r['peak_pss_mb']:>9.0f}")
    if "largest" in report:
        print(f"\n{'largest gossip run':<22}{'status':>10}{'wall s':>9}{'RSS MB':>9}{'PSS MB':>9}  settings")
        for r in report["largest"]["runs"]:
            print(f"{str(r['nodes']) + ' nodes':<22}{r['status']:>10}{r['command_wall_s']:>9.1f}"
                  f"{r['peak_rss_mb']:>9.0f}{r['peak_pss_mb']:>9.0f}  {' '.join(r['settings']) or 'defaults'}")
            if r["error"]:
                print(f"    error: {r['error'][:160]}")


def _print_throughput(report: dict[str, Any]) -> None:
    print(f"\n{'ring of 8, lock-step':<32}{'msgs/s':>10}{'median':>10}{'MB/s':>9}{'CPU us/msg':>12}{'set-up s':>10}")
    for label, entry in report["throughput"].items():
        for impl in (i for i in IMPLEMENTATIONS if i in entry):
            r = entry[impl]
            setup = r.get("startup_s", r.get("connection_setup_s"))
            cpu = f"{r['cpu_us_per_msg']:.1f}" if "cpu_us_per_msg" in r else "-"  # the anchor's is not measured
            print(f"{label + ' ' + impl:<32}{r['msgs_per_s']:>10.0f}{r['median']:>10.0f}"
                  f"{r.get('mb_per_s', r.get('wire_mb_per_s')):>9.1f}{cpu:>12}{setup:>10.3f}")
    if "skipped" in report["anchor"]:
        print(f"\nDecentralizePy anchor skipped: {report['anchor']['skipped']}")
        return
    print("\ndsim vs DecentralizePy, back to back (ratio: dsim msgs/s over DecentralizePy's)")
    rows = [(name, " ".join(f"{v:.0f}" for v in r["dsim_msgs_per_s"]),
             " ".join(f"{v:.0f}" for v in r["decentralizepy_msgs_per_s"]),
             " ".join(f"{v:.2f}" for v in r["ratio"]), f"{r['median_ratio']:.2f}")
            for name, r in ratio_rows(report["throughput"])]
    header = ("", "dsim msgs/s", "DecentralizePy msgs/s", "ratio", "median")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = (f"  {cell:>{w}}" for cell, w in zip(row[1:], widths[1:], strict=True))
        print(f"{row[0]:<{widths[0]}}" + "".join(cells))


def ratio_markdown(report: dict[str, Any]) -> str:
    """The dsim-vs-DecentralizePy table as a markdown page, with the conditions it was measured in."""
    machine = report["machine"]
    rounds = ", ".join(f"{_size_name(e['bytes'])} x {e['rounds']} rounds" for e in report["throughput"].values())
    lines = [
        "# dsim's transport vs DecentralizePy's",
        "",
        f"8 nodes on a ring, lock-step rounds ({rounds}), every message to both neighbours. Each dsim run "
        "(`dsim launch --algorithm exchange`) is followed straight by a run of DecentralizePy's own TCP layer "
        f"doing the same (`{Path(report['anchor']['script']).relative_to(ROOT.parent)}`), so each ratio "
        "compares two runs seconds apart; ratio = dsim msgs/s / DecentralizePy msgs/s (above 1: dsim is faster).",
        "",
        f"Measured at commit {report.get('commit')}{' (--quick)' if report['quick'] else ''} on "
        f"{machine['cpu_count']} CPUs ({machine['cpu_model']}), load average {machine['load_avg_at_start'][0]} "
        f"at the start and {machine['load_avg_at_end'][0]} at the end.",
        "",
        f"dsim's ZeroMQ calls: {machine.get('native_io', 'pyzmq')}. Through pyzmq's alone "
        "(`--set net.native_io=off`, what an install without a C compiler runs), one process per node, "
        + "; ".join(f"{_size_name(e['bytes'])}: {e['dsim_pyzmq_io']['msgs_per_s']:.0f} msgs/s"
                    for e in report["throughput"].values() if "dsim_pyzmq_io" in e) + " (best of the repeats).",
        "",
        "| layout | dsim msgs/s | DecentralizePy msgs/s | ratio | median ratio |",
        "|---|---|---|---|---|",
    ]
    for name, r in ratio_rows(report["throughput"]):
        lines.append(f"| {name} | {', '.join(f'{v:.0f}' for v in r['dsim_msgs_per_s'])} "
                     f"| {', '.join(f'{v:.0f}' for v in r['decentralizepy_msgs_per_s'])} "
                     f"| {', '.join(f'{v:.2f}' for v in r['ratio'])} | {r['median_ratio']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke version: small sizes, under a minute")
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS), metavar="PART",
                        help=f"run only these parts ({', '.join(PARTS)}); the results file's name says which")
    args = parser.parse_args()
    if args.quick:
        sizes = {"1KB": (1024, 300), "1MB": (1 << 20, 20)}
        starts, scale, per_process, repeats = {"10 nodes": (10, 1)}, [100], 50, 1
    else:
        sizes = {"1KB": (1024, 4000), "1MB": (1 << 20, 200)}
        starts = {"10 nodes": (10, 1), "100 nodes": (100, 1), "100 nodes, 10/proc": (100, 10)}
        scale, per_process, repeats = [250, 500, 1000], 100, 2
    # Rates swing 15-20% between repeats on a shared 2-core machine: three repeats, best and median kept
    throughput_repeats = 1 if args.quick else 3
    report: dict[str, Any] = {"machine": machine_facts(), "quick": args.quick, "commit": git_commit()}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dsim-bench-") as tmp:
        if "throughput" in args.only:
            report["anchor"] = anchor_facts()
            anchor = "skipped" not in report["anchor"]
            report["throughput"] = throughput(Path(tmp), sizes, throughput_repeats, anchor)
        if "secure" in args.only:
            report["secure"] = secure_cost(Path(tmp), sizes, throughput_repeats)
        if "startup" in args.only:
            report["startup"] = startup(Path(tmp), starts, repeats)
        if "largest" in args.only:
            report["largest"] = largest(Path(tmp), scale, per_process)
    report["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report["benchmark_wall_s"] = round(time.perf_counter() - started, 1)
    suffix = ("-quick" if args.quick else "") + ("" if set(args.only) == set(PARTS) else "-" + "-".join(args.only))
    out = write_results("runtime" + suffix, report)
    written = [out]
    if "throughput" in report and "skipped" not in report["anchor"]:
        written.append(out.with_name(f"transport-vs-decentralizepy{'-quick' if args.quick else ''}.md"))
        written[-1].write_text(ratio_markdown(report))
    print_table(report)
    print(f"\nwritten to {', '.join(str(p.relative_to(ROOT)) for p in written)} "
          f"in {report['benchmark_wall_s']:.0f} s")


if __name__ == "__main__":
    main()
