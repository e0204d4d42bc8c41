"""The launcher of machine i > 0: proves it resolved the same experiment, then watches its workers.

It reports any of its worker processes that dies, stops them if the coordinator goes silent, and
receives the run's summary at the end so that every machine's run directory is complete.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import zmq
import zmq.asyncio

from dsim import secure
from dsim.config import fingerprint_view
from dsim.console import Console
from dsim.control import Accept, End, Lost, Machine, ProcExit, Refuse, decode, encode
from dsim.plan import LocalProc
from dsim.supervision import Outcome
from dsim.wire import WireError


async def follow(cfg: dict[str, Any], graph_hash: str, machine: int, control: str,
                 procs: list[LocalProc], console: Console,
                 key: secure.RunKey | None = None) -> tuple[Outcome, dict[str, Any]]:
    net = cfg.net
    heartbeat, silent_limit = net.heartbeat, net.heartbeat_timeout
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, f"m{machine}".encode())
    sock.setsockopt(zmq.LINGER, 1000)
    secure.dial(sock, key)
    sock.connect(control)
    outcome = Outcome()
    reported: set[str] = set()
    try:
        await sock.send(encode(Machine(machine=machine, config=fingerprint_view(cfg), graph=graph_hash)))
        deadline = time.monotonic() + net.start_timeout
        last_heard, accepted = time.monotonic(), False
        while True:
            for p in procs:
                code = p.process.exitcode
                if code not in (None, 0) and p.name not in reported:
                    reported.add(p.name)
                    await sock.send(encode(ProcExit(machine=machine, name=p.name, ranks=p.ranks, pid=p.process.pid,
                                                    code=code)))
            now = time.monotonic()
            if not accepted and now > deadline:
                hint = " (a secure run: does every machine have the same net.secure and run key?)" if key else ""
                return _failed(outcome, f"the coordinator at {control} did not answer in "
                                        f"{net.start_timeout:g} s{hint}", "failed")
            if accepted and now - last_heard > silent_limit:
                reason = f"lost contact with the coordinator at {control}"
                await sock.send(encode(Lost(machine=machine, reason=reason)))  # it may still hear us
                return _failed(outcome, reason, "failed")
            try:
                msg = decode(await asyncio.wait_for(sock.recv(), heartbeat))
            except (TimeoutError, WireError):
                continue
            last_heard = time.monotonic()
            match msg:
                case Refuse():
                    return _failed(outcome, msg.reason, "refused")
                case Accept():
                    accepted = True
                    console.say(f"dsim: machine {machine} accepted by the coordinator (run {msg.run})")
                case End():
                    summary = msg.summary
                    outcome.status = summary.get("status", "failed")
                    outcome.failures = summary.get("failures", [])
                    outcome.warnings = summary.get("warnings", [])
                    return outcome, summary
    finally:
        sock.close(linger=1000)
        ctx.term()


def _failed(outcome: Outcome, reason: str, status: str) -> tuple[Outcome, dict[str, Any]]:
    outcome.status = status
    outcome.failures.append({"ranks": [], "reason": reason})
    return outcome, {"status": status, "failures": outcome.failures}
