"""Live progress and the closing results: what a node records, what heartbeats carry, how the coordinator
aggregates it, how the launcher shows it on a terminal, in a pipe and under --quiet, and how the closing
results read."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import termios
import time
from pathlib import Path

from conftest import REPO, dsim_script, run_dsim, summary
from dsim import control
from dsim.console import fmt_seconds, plain_lines
from dsim.node import Node
from dsim.plan import WorkerPlan
from dsim.program import Program
from dsim.progress import BOARD, Board, NodeState, Tracker, View, summarize
from dsim.results import result_lines
from dsim.supervision import CoordinatorState
from dsim.testing import run_program

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


# --- aggregation (pure: made-up states and times) ----------------------------------------------
def thousand_nodes() -> dict[int, NodeState]:
    """A server waiting, 900 clients distilling at 10 steps/s from various steps, 99 embedding means."""
    nodes = {0: NodeState("server", "wait for clients", 0, 0, since=0.0, first=0, at=0.0)}
    for rank in range(1, 901):
        step = 100 + rank % 51  # 100 .. 150
        nodes[rank] = NodeState("client", "distill", step, 400, since=0.0, first=step - 100, at=10.0)
    for rank in range(901, 1000):  # those from 950 on are done (the test says so)
        nodes[rank] = NodeState("client", "embed means", 3 if rank < 950 else 6, 6, since=8.0, first=0, at=10.0)
    return nodes


def test_a_thousand_nodes_are_a_handful_of_lines() -> None:
    nodes, done = thousand_nodes(), set(range(950, 1000))
    rows = summarize(nodes, done, range(1000), now=10.0)
    assert [(r.who, r.phase, r.nodes) for r in rows] == [
        ("server", "wait for clients", 1), ("client", "distill", 900), ("client", "embed means", 49),
        ("client", "done", 50)]
    distill = rows[1]
    assert distill.steps == (100, 125, 150) and distill.total == 400
    assert distill.eta == 30.0  # the slowest node: 300 steps left at 10 steps/s
    assert rows[2].eta == 2.0  # 3 seeds in 2 s, 3 to go
    lines = plain_lines(View("running 10.0 s | nodes done 50/1000", rows))
    assert len(lines) == 5, lines
    assert re.fullmatch(r"  client\s+distill\s+900 nodes\s+median 125/400, min 100, max 150\s+ETA 30 s", lines[2])
    assert re.fullmatch(r"  server\s+wait for clients\s+1 node", lines[1])
    assert re.fullmatch(r"  client\s+done\s+50 nodes", lines[4])


def test_the_eta_counts_down_between_reports_and_never_goes_negative() -> None:
    state = NodeState("client", "distill", 100, 400, since=0.0, first=0, at=10.0)
    assert state.eta(10.0) == 30.0 and state.eta(25.0) == 15.0 and state.eta(99.0) == 0.0
    assert NodeState("client", "distill", 7, 400, since=5.0, first=7, at=5.0).eta(6.0) is None  # no rate yet
    assert NodeState("server", "wait for clients", 0, 0, 0.0, 0, 0.0).eta(1.0) is None


def test_small_runs_get_one_row_per_node_and_silent_nodes_show() -> None:
    nodes = {r: s for r, s in thousand_nodes().items() if r < 3}
    rows = summarize(nodes, {2}, range(5), now=10.0)
    lines = plain_lines(View("running", rows))[1:]
    assert [line.split()[:4] for line in lines] == [
        ["node", "0", "server", "wait"], ["node", "1", "client", "distill"], ["node", "2", "client", "done"],
        ["node", "3", "no", "progress"], ["node", "4", "no", "progress"]]
    assert re.fullmatch(r"  node 1 client\s+distill\s+101/400\s+ETA 30 s", lines[1])


def test_many_phases_are_folded_into_one_row() -> None:
    nodes = {r: NodeState("peer", f"phase {r % 30}", 1, 2, 0.0, 0, 1.0) for r in range(300)}
    rows = summarize(nodes, set(), range(300), now=1.0)
    assert len(rows) == 10 and rows[-1].phase == "21 more phases" and sum(r.nodes for r in rows) == 300


def test_heartbeats_carry_only_what_changed_and_the_coordinator_tracks_each_node() -> None:
    board = Board()
    roles = {r: "peer" for r in range(10_000)}
    for r in range(10_000):
        board.record(r, "round", 3, 10)
    board.record(7, "round", 4, 10)  # the latest value wins
    beat = control.Heartbeat(name="w0", bytes_sent=0, bytes_recv=0, msgs_sent=0, msgs_recv=0,
                             progress=board.drain(roles))
    frame = control.encode(beat)
    assert len(frame) < 60_000  # 10,000 nodes: a few bytes each
    assert board.drain(roles) == []  # nothing changed since
    tracker = Tracker()
    tracker.update(control.decode(frame).progress, now=1.0)
    assert tracker.nodes[7].step == 4 and tracker.nodes[8].step == 3 and len(tracker.nodes) == 10_000
    board.record(8, "round", 5, 10)
    board.record(9, "evaluate", 0, 2)
    tracker.update(board.drain(roles), now=3.0)
    assert (tracker.nodes[8].step, tracker.nodes[8].since, tracker.nodes[8].first) == (5, 1.0, 3)  # same phase
    assert (tracker.nodes[9].phase, tracker.nodes[9].since) == ("evaluate", 3.0)  # a new phase restarts the rate
    assert tracker.nodes[8].eta(3.0) == 5.0  # 2 rounds in 2 s, 5 to go


def test_the_coordinator_state_shows_what_heartbeats_brought() -> None:
    plans = [WorkerPlan("w0.0", 0, [0, 1]), WorkerPlan("w0.1", 0, [2])]
    state = CoordinatorState(plans, machines=1, run_id="r", config={}, graph_hash="g", local={},
                             start_timeout=60.0, timeout=30.0, heartbeat_timeout=60.0)
    state.begin(0.0)
    for p in plans:
        state.on_message(p.name.encode(), control.Register(name=p.name, pid=1, ranks=p.ranks, endpoints={}), 1.0)
    for p in plans:
        state.on_message(p.name.encode(), control.Ready(name=p.name), 2.0)
    steps = [control.Steps("client", "distill", 400, [1], [40]), control.Steps("server", "wait for clients", 0, [0], [0])]
    state.on_message(b"w0.0/hb", control.Heartbeat(name="w0.0", bytes_sent=380, bytes_recv=0, msgs_sent=1,
                                                    msgs_recv=0, progress=steps), 3.0)
    view = state.progress(4.0)
    assert view.headline.startswith("running    2.0 s | nodes done 0/3 | sent 380 B")
    assert [(r.who, r.phase, r.steps) for r in view.rows] == [
        ("node 0 server", "wait for clients", None), ("node 1 client", "distill", (40, 40, 40)), ("node 2", "", None)]


def test_the_ml_loops_count_their_steps() -> None:
    import torch

    from dsim.ml.dm import client_mean_embeddings, distill_dm, init_from_real
    from dsim.ml.evaluate import evaluate_synthetic

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(30, 1, 8, 8, generator=gen), torch.arange(30) % 3
    syn_x, syn_y = init_from_real(x, y, 1, seed=1)
    model = {"width": 8}
    calls: dict[str, list[tuple[int, int]]] = {"dm": [], "means": [], "eval": []}
    distill_dm(syn_x, syn_y, x, y, iterations=3, batch_real=4, model=model, on_step=lambda *a: calls["dm"].append(a))
    client_mean_embeddings(x, y, [5, 6], 3, batch=4, model=model, on_step=lambda *a: calls["means"].append(a))
    evaluate_synthetic(syn_x, syn_y, x, y, num_models=2, epochs=1, model=model,
                       on_step=lambda *a: calls["eval"].append(a))
    assert calls == {"dm": [(0, 3), (1, 3), (2, 3), (3, 3)], "means": [(0, 2), (1, 2), (2, 2)],
                     "eval": [(0, 2), (1, 2), (2, 2)]}


# --- the closing results -----------------------------------------------------------------------
def test_results_read_in_units() -> None:
    collabdm = {"accuracy_mean": 0.94153, "accuracy_std": 0.00231, "accuracies": [0.94, 0.942, 0.943],
                "num_eval_models": 3, "finished_t": 75.2, "union_images": 120, "clients_answered": 3,
                "clients_missing": [], "bytes_per_client": {"1": 26193, "2": 26193, "3": 26193}}
    assert result_lines(collabdm) == [
        "  accuracy          94.15 % ± 0.23 (3 models)",
        "  finished at       1 min 15 s",
        "  clients           3 answered, none missing",
        "  union images      120",
        "  bytes per client  26.2 KB (3 clients)",
    ]
    fedavg = {"accuracy": 0.9, "rounds": 3, "model_bytes": 1_234_000, "dropped": {"1": [4, 5]},
              "history": [{"round": r, "clients": 4, "accuracy": a} for r, a in enumerate([0.5, 0.8, 0.9])],
              "bytes_per_client": {"1": 1000, "2": 3000}, "mean_bytes_per_client": 2000.0}
    lines = result_lines(fedavg)
    assert lines[0] == "  accuracy          90.00 %"
    assert "  history           round 1: 50.00 %, round 2: 80.00 %, round 3: 90.00 %" in lines
    assert "  model bytes       1.2 MB" in lines and "  dropped           clients missing in 1 round" in lines
    assert "  bytes per client  mean 2.0 KB, min 1.0 KB, max 3.0 KB (2 clients)" in lines
    dpsgd = {"accuracy_mean": 0.9, "accuracy_min": 0.85, "accuracy_max": 0.93, "accuracy_per_node": {"0": 0.85, "1": 0.93}}
    assert result_lines(dpsgd) == ["  accuracy  90.00 % mean of 2 nodes (min 85.00 %, max 93.00 %)"]
    exchange = {"msgs": 20000, "bytes": 20_480_000, "seconds": 2.5, "msgs_per_s": 8000.0, "mb_per_s": 8.192}
    assert result_lines(exchange) == ["  msgs          20,000", "  bytes         20.5 MB", "  time          2.5 s",
                                      "  message rate  8,000/s", "  throughput    8.192 MB/s"]
    mtt = {"optimizer": "sgd", "lr": 0.01, "search": [{"optimizer": "sgd", "lr": 0.01, "accuracy": 0.4},
                                                      {"optimizer": "adam", "lr": 0.001, "accuracy": 0.3}],
           "clients_answered": 2, "clients_missing": [3, 4], "mean_val_gain": 0.031, "max_error": float("nan")}
    assert result_lines(mtt) == ["  clients          2 answered, 2 missing (nodes 3-4)", "  chosen           sgd, lr 0.01",
                                 "  lr search        sgd 0.01: 40.00 %, adam 0.001: 30.00 %",
                                 "  validation gain  +3.10 points (mean over clients)", "  max error        n/a"]


def test_durations_read_as_people_say_them() -> None:
    assert [fmt_seconds(s) for s in (0.42, 4.44, 12.3, 185, 7620)] == ["0.42 s", "4.4 s", "12 s", "3 min 05 s",
                                                                       "2 h 07 min"]


# --- real launches -----------------------------------------------------------------------------
# Heartbeats (and redraws) every 0.1 s: the distill phase spans several of them even on a fast machine.
SMALL_COLLABDM = ["--nodes", "2", "--topology", "star", "--set", "dm.iterations=100", "--set", "dm.seeds=4",
                  "--set", "dm.eval_epochs=10", "--set", "dm.eval_models=2", "--set", "dm.batch_real=16",
                  "--set", "dm.mean_batch=16", "--set", "dm.width=16", "--set", "dm.ipc=4",
                  "--set", "net.heartbeat=0.1"]


def run_in_terminal(args: list[str], cwd: Path, timeout: float = 240) -> tuple[int, str]:
    """Run `dsim ARGS` on a pseudo-terminal (120 x 40), as a person at a shell would; its whole output."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "PYTHONPATH": str(REPO / "tests")}
    for var in ("NO_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "FORCE_COLOR", "COLUMNS", "LINES"):
        env.pop(var, None)
    proc = subprocess.Popen([dsim_script(), *args], stdin=slave, stdout=slave, stderr=slave, env=env, cwd=cwd,
                            close_fds=True)
    os.close(slave)
    out, deadline = bytearray(), time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every writer closed the terminal
                    break
                if not data:
                    break
                out += data
            elif proc.poll() is not None:
                break
        else:
            raise AssertionError(f"dsim {' '.join(args)} still ran after {timeout} s:\n{out.decode()[-3000:]}")
        return proc.wait(timeout=30), out.decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


def screen_lines(output: str) -> list[str]:
    """The output with the terminal's control sequences removed, one entry per line or redraw."""
    return [line for line in re.split(r"[\r\n]+", ANSI.sub("", output)) if line.strip()]


def test_a_terminal_shows_every_node_s_phase_and_step_live(tmp_path) -> None:
    code, output = run_in_terminal(["launch", *SMALL_COLLABDM, "--out", str(tmp_path / "run")], tmp_path)
    assert code == 0, output[-3000:]
    assert "\x1b[" in output  # drawn in place, not printed line after line
    lines = screen_lines(output)
    distill = [line for line in lines if re.match(r"node [12] client\s+distill\s+[━╺╸ ]*\d+/100\b", line)]
    assert distill, lines
    assert any(re.search(r"ETA \d", line) for line in distill), distill
    assert any(re.match(r"node 0 server\s+wait for clients", line) for line in lines)
    assert any(re.match(r"running\s+\d+\.\d s \| nodes done [0-3]/3 \| sent", line) for line in lines)
    # the display is gone before the closing output, which prints whole, line by line
    tail = ANSI.sub("", output[output.rindex("\x1b[?25h"):]).replace("\r", "").splitlines()
    tail = [line for line in tail if line.strip()]
    assert tail[0].split() == ["rank", "role", "host", "sent", "recv", "msgs", "out", "msgs", "in"], tail
    assert tail[4].split()[0] == "all" and tail[5] == "results:"
    assert re.fullmatch(r"  accuracy\s+\d+\.\d\d % ± \d+\.\d\d \(2 models\)", tail[6]), tail
    assert tail[-1].startswith("dsim: finished in ")
    assert summary(tmp_path / "run")["status"] == "ok"


def test_a_failure_prints_cleanly_after_the_live_display(tmp_path) -> None:
    code, output = run_in_terminal(["launch", "--nodes", "4", "--topology", "ring", "--algorithm",
                                    "testprogs.failing", "--set", "rounds=1000", "--out", str(tmp_path / "r")],
                                   tmp_path)
    assert code == 1
    after = ANSI.sub("", output[output.rindex("\x1b[?25h"):]).replace("\r", "").splitlines()
    assert "dsim: error: node 1 failed: ValueError: node 1 gives up on purpose (at failing.py:13)" in after, after


def test_a_pipe_gets_plain_aggregated_lines_every_ten_seconds(tmp_path) -> None:
    # 16 gossip nodes, one round per emulated second at least: the run lasts over 12 s, so the block
    # printed at 10 s finds the peers mid-way, aggregated (more than 12 nodes) into one line.
    res = run_dsim("launch", "--nodes", "16", "--topology", "ring", "--algorithm", "gossip", "--nodes-per-process",
                   "8", "--set", "rounds=12", "--set", "links.latency=1s", "--set", "gossip.dim=10",
                   "--out", str(tmp_path / "run"), timeout=180)
    assert res.returncode == 0, res.stderr
    assert "\x1b" not in res.stderr and "\r" not in res.stderr
    lines = res.stderr.splitlines()
    headlines = [i for i, line in enumerate(lines) if line.startswith("running")]
    wall = summary(tmp_path / "run")["wall_time_s"]
    assert 1 <= len(headlines) <= wall / 10 + 1, lines  # a block every 10 s, not every heartbeat
    block = lines[headlines[0]:headlines[0] + 3]
    assert re.match(r"running\s+\d+\.\d s \| nodes done 0/16 \| sent \d", block[0]), block
    rounds = re.fullmatch(r"  peer  round  16 nodes  (?:median )?(\d+)/12(?:, min \d+, max \d+)?  ETA .+ s", block[1])
    assert rounds and 1 <= int(rounds[1]) <= 11, block
    assert not block[2].startswith("  "), block  # one line for 16 nodes in one phase
    assert "results:" in res.stdout and "  max error" in res.stdout


def test_quiet_shows_nothing_when_all_goes_well(tmp_path) -> None:
    res = run_dsim("launch", "--nodes", "4", "--topology", "ring", "--algorithm", "gossip", "--set", "rounds=5",
                   "--out", str(tmp_path / "run"), "--quiet")
    assert res.returncode == 0 and (res.stdout, res.stderr) == ("", "")
    assert summary(tmp_path / "run")["status"] == "ok"


class _Collector(Node):
    async def run(self):
        if self.rank == 0:
            got = await self.gather("x", [1, 2, 3], progress="wait for clients")
            seen.extend(BOARD.drain({0: "server"}))  # what the next heartbeat would carry
            return {"got": sorted(got)}
        await self.send(0, "x", self.rank)
        return {}


seen: list = []
COLLECT = Program(name="collect", roles={"peer": _Collector})


def test_a_gather_with_progress_counts_the_sources_heard_from() -> None:
    BOARD.drain({})
    run_program(COLLECT, nodes=4, topology="star", timeout=30)
    server = [s for s in seen if s.role == "server"]
    assert [(s.phase, s.total, s.steps) for s in server] == [("wait for clients", 3, [3])]
