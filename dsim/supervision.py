"""The coordinator's decisions, apart from its sockets: phases, supervision, termination, the outcome.

`CoordinatorState` is fed decoded control messages, the time, and the exit codes of this machine's worker
processes; it answers with the messages to send. It decides when each phase of a run is complete, and
raises `Abort` when the run must end: a node failed, a machine or a data share differs, a worker died or
fell silent, or a phase missed its deadline. It has no sockets, no processes and no clock of its own, so
its tests drive it with plain calls and made-up times.
"""

from __future__ import annotations

import enum
import math
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from dsim import control
from dsim.config import differences
from dsim.console import fmt_bytes
from dsim.plan import WorkerPlan, format_ranks
from dsim.progress import Tracker, View, summarize

Send: TypeAlias = tuple[bytes, control.Message]
"""A message to send, and the ZeroMQ identity of the worker or launcher it goes to."""


class Abort(Exception):
    """Ends the run: carries the reason, the ranks to blame, and whether it was a refusal to start."""

    def __init__(self, reason: str, ranks: list[int] | None = None, status: str = "failed") -> None:
        super().__init__(reason)
        self.reason, self.ranks, self.status = reason, ranks or [], status


@dataclass
class Outcome:
    status: str = "ok"
    failures: list[dict[str, Any]] = field(default_factory=list)
    results: dict[int, dict[str, Any]] = field(default_factory=dict)
    traffic: dict[int, dict[str, Any]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    data_fingerprint: str = ""
    devices: dict[int, dict[str, Any]] = field(default_factory=dict)  # rank -> device, peak_memory_mb


class Phase(enum.IntEnum):
    """The phases of a run, in order; every one before STOPPING has a deadline or supervision."""

    REGISTERING = 1  # workers bind and load their data; the launchers of other machines are compared
    LINKING = 2  # workers connect to their neighbours
    RUNNING = 3  # the node programs run; heartbeats and processes are watched
    DRAINING = 4  # every node is done: query traffic counts until nothing is in flight
    STOPPING = 5  # stop was sent: collect the final reports that can still come
    FINISHED = 6


FROM_WORKERS = (control.Register, control.Ready, control.Heartbeat, control.Done, control.Failed, control.Counts,
                control.Final)
"""The messages a worker sends about itself (its name is the sender's); a launcher's messages name others."""


class CoordinatorState:
    """Everything the coordinator knows about a run, and what it does with each message or moment."""

    def __init__(self, plans: Sequence[WorkerPlan], *, machines: int, run_id: str, config: Mapping[str, Any],
                 graph_hash: str, local: Mapping[str, int], start_timeout: float, timeout: float,
                 heartbeat_timeout: float) -> None:
        """`config` is this machine's fingerprint view; `local` maps this machine's workers to their pids."""
        self.plans = {p.name: p for p in plans}
        self.world = sorted(r for p in plans for r in p.ranks)
        self._hosts = {r: p.name for p in plans for r in p.ranks}  # which worker hosts each rank
        self.remote_machines = set(range(1, machines))
        self.run_id, self.config, self.graph_hash = run_id, config, graph_hash
        self.local = dict(local)
        self.start_timeout, self.timeout, self.heartbeat_timeout = start_timeout, timeout, heartbeat_timeout
        self.stop_timeout = min(10.0, heartbeat_timeout)
        self.outcome = Outcome()
        self.phase = Phase.REGISTERING
        self.launchers: dict[int, bytes] = {}
        self.identities: dict[str, bytes] = {}  # worker name -> identity of its control socket
        self.registered: dict[str, control.Register] = {}
        self.ready: set[str] = set()
        self.done: set[int] = set()
        self.last_seen: dict[str, float] = {}
        self.beats: dict[str, control.Heartbeat] = {}
        self.tracker = Tracker()  # every node's latest phase and step, from the heartbeats
        self.waves: dict[str, control.Counts] = {}
        self.finals: dict[str, dict[int, dict[str, Any]]] = {}
        self.exits: dict[str, int] = {}  # exit codes of this machine's workers that have exited
        self.gone: set[str] = set()  # workers whose processes or machines are reported dead
        self.stopped: set[str] = set()  # workers that were sent `stop`
        self.wave = 0
        self.deadline = math.inf
        self._phase_timeout = math.inf
        self._t0 = self._started = self._drain_until = 0.0
        self._previous: tuple[int, ...] | None = None
        self._stop_reason = ""
        self._outbox: list[Send] = []

    # --- inputs -------------------------------------------------------------------------------
    def begin(self, now: float) -> None:
        """Start the clock of the run and of its first phase."""
        self._t0 = now
        self._phase_deadline(now, self.start_timeout)

    def on_message(self, identity: bytes, msg: control.Message, now: float) -> list[Send]:
        """Take one message from a worker or launcher; return the sends it causes. May raise Abort."""
        name = getattr(msg, "name", "")
        known = name in self.plans and isinstance(msg, FROM_WORKERS)
        if known:
            if not isinstance(msg, control.Heartbeat):  # heartbeats come from a side socket: no replies there
                self.identities.setdefault(name, identity)
                if self.phase is Phase.STOPPING and name not in self.stopped:
                    self._tell_stop([name])  # a late worker: stop it, then wait for its report
            if Phase.RUNNING <= self.phase <= Phase.DRAINING:
                self.last_seen[name] = now
        match msg:
            case control.Machine():
                self._check_machine(identity, msg)
            case control.Register() if known:
                self.registered[name] = msg
            case control.Ready() if known:
                self.ready.add(name)
            case control.Heartbeat() if known:
                self.beats[name] = msg
                self.tracker.update(msg.progress, now)
            case control.Done() if known and self._hosts.get(msg.rank) == name:  # (ranks: a list per worker)
                self.done.add(msg.rank)
                self.outcome.results[msg.rank] = msg.result
                self.outcome.devices[msg.rank] = {"device": msg.device, "peak_memory_mb": msg.peak_memory_mb}
            case control.Failed():
                self._abort(Abort(f"node {msg.rank} failed: {msg.reason}", [msg.rank]))
            case control.Counts() if known and self.phase is Phase.DRAINING and msg.wave == self.wave:
                self.waves[name] = msg
            case control.Final() if known:
                self.finals[name] = msg.nodes
            case control.ProcExit():
                self.gone.add(msg.name)
                self._abort(Abort(f"{format_ranks(msg.ranks)} (pid {msg.pid} on machine {msg.machine}) died: "
                                  f"{exit_reason(msg.code)}", msg.ranks))
            case control.Lost():
                self.gone.update(n for n, p in self.plans.items() if p.machine == msg.machine)
                self._abort(Abort(f"machine {msg.machine}: {msg.reason}"))
        self._advance(now)
        return self._flush()

    def check(self, now: float, exits: Mapping[str, int], interrupted: bool = False) -> list[Send]:
        """Take the time and the exit codes of this machine's exited workers; raise Abort when a deadline
        passed, a worker died or fell silent, or the user interrupted. Returns the sends it causes."""
        self.exits.update(exits)
        if self.phase < Phase.STOPPING:
            if now >= self.deadline:
                raise Abort(f"timed out after {self._phase_timeout:g} s waiting for {self._waiting_for()}")
            if interrupted:
                raise Abort("interrupted by the user (Ctrl-C)", status="interrupted")
            self._supervise(now)
        elif self.phase is Phase.STOPPING and now >= self.deadline:
            self.outcome.warnings.append(f"timed out after {self.stop_timeout:g} s waiting for final reports "
                                         f"from {', '.join(self.awaited())}")
            self._finish(now)
        self._advance(now)
        return self._flush()

    def fail(self, exc: Abort, now: float) -> list[Send]:
        """Record why the run ends and stop everyone; returns the sends (queued replies first)."""
        if self.phase < Phase.STOPPING:
            self.outcome.status = exc.status
            self.outcome.failures.append({"ranks": exc.ranks, "reason": exc.reason})
            self._stop(exc.reason, now)
            self._advance(now)
        return self._flush()

    # --- what the socket loop asks ------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self.phase is Phase.FINISHED

    def due(self, now: float) -> float:
        """Seconds until the current phase's deadline (inf while the nodes run)."""
        return max(0.0, self.deadline - now)

    def tick(self) -> list[Send]:
        """A tick to every worker and launcher: the coordinator is alive."""
        tick = control.Tick()
        return [(identity, tick) for identity in [*self.identities.values(), *self.launchers.values()]]

    def end(self, summary: dict[str, Any]) -> list[Send]:
        """The run's summary, for the launchers of the other machines."""
        return [(identity, control.End(summary=summary)) for identity in self.launchers.values()]

    def progress(self, now: float) -> View:
        """What the launcher shows while the run goes on: a headline, and each node's phase and step
        (aggregated by role and phase in large runs)."""
        if self.phase < Phase.RUNNING:
            return View(f"starting: {len(self.registered)}/{len(self.plans)} workers registered, "
                        f"{len(self.ready)} ready")
        sent = sum(b.bytes_sent for b in self.beats.values())
        return View(f"running {now - self._started:6.1f} s | nodes done {len(self.done)}/{len(self.world)} | "
                    f"sent {fmt_bytes(sent)}", summarize(self.tracker.nodes, self.done, self.world, now))

    def awaited(self) -> list[str]:
        """Workers whose final report can still come: those we heard from or that still run here, unless
        they reported, died, or exited without ever contacting us. A worker that exits with code 0 sent its
        report first, so that report is on its way."""
        def can_report(name: str) -> bool:
            if name in self.finals or name in self.gone:
                return False
            if name in self.exits:
                return self.exits[name] == 0 and name in self.identities
            return name in self.identities or name in self.local
        return [name for name in self.plans if can_report(name)]

    # --- phases -------------------------------------------------------------------------------
    def _advance(self, now: float) -> None:
        """Leave every phase whose condition holds, in order."""
        if self.phase is Phase.REGISTERING and len(self.registered) == len(self.plans) \
                and len(self.launchers) == len(self.remote_machines):
            self._check_data()
            endpoints = {r: a for reg in self.registered.values() for r, a in reg.endpoints.items()}
            self._to_workers(control.Peers(run=self.run_id, endpoints=endpoints))
            self.phase = Phase.LINKING
            self._phase_deadline(now, self.start_timeout)
        if self.phase is Phase.LINKING and len(self.ready) == len(self.plans):
            self.last_seen = {name: now for name in self.plans}
            self._started = now
            self.outcome.timings["startup_s"] = now - self._t0
            self._to_workers(control.Start())
            self.phase = Phase.RUNNING
            self._phase_deadline(now, math.inf)
        if self.phase is Phase.RUNNING and len(self.done) == len(self.world):
            self.outcome.timings["run_s"] = now - self._started
            self.phase = Phase.DRAINING
            self._drain_until = now + self.timeout
            self._query(now)
        if self.phase is Phase.DRAINING and len(self.waves) == len(self.plans):
            self._after_wave(now)
        if self.phase is Phase.STOPPING and not self.awaited():
            self._finish(now)

    def _phase_deadline(self, now: float, timeout: float) -> None:
        self._phase_timeout, self.deadline = timeout, now + timeout

    def _waiting_for(self) -> str:
        """What the current phase still waits for, for its timeout message."""
        if self.phase is Phase.REGISTERING:
            return "registration of " + ", ".join(
                [format_ranks(p.ranks) for n, p in self.plans.items() if n not in self.registered]
                + [f"machine {m}" for m in sorted(self.remote_machines - set(self.launchers))])
        if self.phase is Phase.LINKING:
            return "links of " + ", ".join(format_ranks(p.ranks) for n, p in self.plans.items()
                                           if n not in self.ready)
        return "traffic counts"

    def _check_machine(self, identity: bytes, msg: control.Machine) -> None:
        if msg.machine not in self.remote_machines:
            self._send(identity, control.Refuse(reason=f"unexpected machine rank {msg.machine}"))
            return
        diffs = differences(self.config, msg.config)
        if msg.graph != self.graph_hash:
            diffs.append("the graph (topology files or builders differ)")
        if diffs:
            reason = f"machine {msg.machine} resolved a different config: " + "; ".join(diffs[:6])
            self._send(identity, control.Refuse(reason=reason))
            self._abort(Abort(reason, status="refused"))
            return
        self.launchers[msg.machine] = identity
        self._send(identity, control.Accept(run=self.run_id))

    def _check_data(self) -> None:
        """Every node must have computed the same data fingerprint, or their files or settings differ."""
        groups: dict[str, list[int]] = {}
        for reg in self.registered.values():
            for rank, fps in reg.data.items():
                groups.setdefault(fps["data"], []).append(rank)
        if len(groups) > 1:
            (fp_a, ranks_a), (fp_b, ranks_b) = sorted(groups.items(), key=lambda kv: -len(kv[1]))[:2]
            raise Abort(f"{format_ranks(sorted(ranks_b))} computed data fingerprint {fp_b[:12]} but "
                        f"{format_ranks(sorted(ranks_a))} computed {fp_a[:12]}: their dataset files or data "
                        f"settings differ", sorted(ranks_b), status="refused")
        self.outcome.data_fingerprint = next(iter(groups), "")

    def _supervise(self, now: float) -> None:
        for name, code in self.exits.items():
            if name not in self.finals:
                ranks = self.plans[name].ranks
                raise Abort(f"{format_ranks(ranks)} (pid {self.local[name]}) died: {exit_reason(code)}",
                            ranks)
        for name, seen in self.last_seen.items():
            if name not in self.finals and now - seen > self.heartbeat_timeout:
                ranks = self.plans[name].ranks
                raise Abort(f"{format_ranks(ranks)} stopped answering (no heartbeat for "
                            f"{self.heartbeat_timeout:g} s)", ranks)

    def _query(self, now: float) -> None:
        self.wave += 1
        self.waves = {}
        self._phase_deadline(now, self.timeout)
        self._to_workers(control.Query(wave=self.wave))

    def _after_wave(self, now: float) -> None:
        """Counting termination: two identical waves with all sent bytes received mean nothing in flight."""
        totals = tuple(sum(getattr(m, k) for m in self.waves.values()) for k in control.TRAFFIC_FIELDS)
        quiet = totals[0] == totals[1] and totals[2] == totals[3] and totals == self._previous
        self._previous = totals
        if quiet:
            self._stop("finished", now)
        elif now > self._drain_until:
            self.outcome.warnings.append(f"{totals[0] - totals[1]} bytes still in flight when the run stopped")
            self._stop("finished", now)
        else:
            self._query(now)

    def _stop(self, reason: str, now: float) -> None:
        self.phase = Phase.STOPPING
        self._stop_reason = reason
        self._phase_deadline(now, self.stop_timeout)
        self._tell_stop(list(self.identities))
        for identity in self.launchers.values():
            self._send(identity, control.Stop(reason=reason))

    def _tell_stop(self, names: list[str]) -> None:
        for name in names:
            self.stopped.add(name)
            self._send(self.identities[name], control.Stop(reason=self._stop_reason))

    def _finish(self, now: float) -> None:
        self.phase = Phase.FINISHED
        self.deadline = math.inf
        self.outcome.timings["wall_s"] = now - self._t0
        self.outcome.traffic = {r: s for nodes in self.finals.values() for r, s in nodes.items()}

    def _abort(self, exc: Abort) -> None:
        """Raise, unless the run is already stopping: then a late failure is only worth a warning."""
        if self.phase < Phase.STOPPING:
            raise exc
        self.outcome.warnings.append(exc.reason)

    # --- the outbox ---------------------------------------------------------------------------
    def _send(self, identity: bytes, msg: control.Message) -> None:
        self._outbox.append((identity, msg))

    def _to_workers(self, msg: control.Message) -> None:
        for identity in self.identities.values():
            self._send(identity, msg)

    def _flush(self) -> list[Send]:
        """The queued sends, oldest first; what was queued before an Abort goes out with `fail`'s stops."""
        sends, self._outbox = self._outbox, []
        return sends


def exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"
