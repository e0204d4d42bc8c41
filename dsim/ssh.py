"""`--launcher ssh`: one command on machine 0 starts, watches and ends the launchers of every machine.

Every machine's launcher runs as a child of this process: machine 0's here, the others through
``ssh -o BatchMode=yes HOST 'cd CWD && exec DSIM launch --spawned --machine-rank I --launcher none'``,
with the same working directory and dsim script on every machine, as DeepSpeed assumes. Each child
reads one JSON line from its stdin: the resolved config as plain values (exactly what the start-up
fingerprint compares) and the machines with their slots. Sending it on stdin needs no shared disk, no
temporary file to clean up and no quoting of a config on a command line, and no machine resolves flags
again (another default, another file) into something else. A secure run's key (dsim.secure) travels
on the same line, outside the config: it is never on a command line, in the environment or on disk.

The child then keeps reading its stdin: when it closes (this launcher died, the ssh session dropped or
was killed) the child stops its run as on Ctrl-C and, failing that, ends its workers and itself, so
nothing outlives its ssh session. Remote output comes back as ``[host] line``. A machine whose launcher
fails while the run goes on is reported to the coordinator (`control.Lost`), which stops every machine.
The exit code is machine 0's, else that of the first machine that failed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil

from dsim import control, secure
from dsim.config import Config, resolve
from dsim.console import Console
from dsim.engines import machine_out
from dsim.errors import DsimError
from dsim.hosts import HostList, Machine
from dsim.options import to_dict

SSH_DEFAULTS = ("-o", "BatchMode=yes", "-o", "ConnectTimeout=10")
"""Never prompt (no terminal to answer), and give up on a host that does not answer in 10 s."""
FORWARDED_ENV = ("PYTHONPATH",)  # programs given as module paths must import on every machine
CHECK_TIMEOUT = 60.0  # the reachability check's hard limit; ssh's ConnectTimeout usually ends it first
GRACE = 10.0  # seconds the other machines get to write their results once machine 0 has ended
STOP_WAIT = 10.0  # seconds a child takes at most to stop once its stdin closes (see _stop_on_eof)
_OUTPUT = threading.Lock()  # one relayed line at a time


def dsim_script() -> str:
    """This environment's dsim script: the path every machine runs."""
    script = Path(sys.executable).parent / "dsim"
    if not script.exists():
        raise DsimError(f"no dsim script next to {sys.executable}: --launcher ssh runs that path on every machine")
    return str(script)


def launcher_argv(script: str, rank: int, quiet: bool) -> list[str]:
    """The command of machine `rank`'s launcher; its run comes on stdin."""
    return [script, "launch", "--spawned", "--machine-rank", str(rank), "--launcher", "none",
            *(["--quiet"] if quiet else [])]


def remote_command(argv: Sequence[str], cwd: str, env: Mapping[str, str] = os.environ) -> str:
    """The shell command ssh runs: the same directory, the forwarded variables, then the launcher."""
    exports = [f"{key}={env[key]}" for key in FORWARDED_ENV if env.get(key)]
    return f"cd {shlex.quote(cwd)} && exec " + shlex.join([*(["env", *exports] if exports else []), *argv])


def ssh_argv(host: str, opts: Sequence[str], command: str) -> list[str]:
    """ssh with the user's options, then those of ours they do not set."""
    ssh = shutil.which("ssh")
    if ssh is None:
        raise DsimError("--launcher ssh needs the ssh client (Debian: openssh-client)")
    return [ssh, *with_defaults(opts), host, command]


def with_defaults(opts: Sequence[str]) -> list[str]:
    given = " ".join(opts).lower()
    ours = [arg for i in range(0, len(SSH_DEFAULTS), 2) for arg in SSH_DEFAULTS[i:i + 2]
            if SSH_DEFAULTS[i + 1].split("=")[0].lower() not in given]
    return [*opts, *ours]


def parse_opts(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise DsimError(f"--ssh-opts '{text}': {exc}") from None


# --- the side of a started machine -------------------------------------------------------------------

def request(cfg: Config, machines: Sequence[Machine], rank: int, key: secure.RunKey | None = None) -> bytes:
    """The run as machine `rank` receives it: one JSON line (with the run key's secret half, if any)."""
    config = to_dict(cfg)
    config["out"] = machine_out(cfg.out, rank)
    doc = {"config": config, "hosts": [[m.host, m.slots] for m in machines],
           "key": key.secret.decode() if key else None}
    return json.dumps(doc).encode() + b"\n"


def receive(fd: int = 0) -> tuple[Config, HostList, secure.RunKey | None]:
    """Read the run sent by machine 0's launcher on `fd` (the config, the machines, the run key), and
    from now on stop when it closes.

    The watch reads a file descriptor of its own with os.read, never sys.stdin: a thread blocked inside a
    Python file object holds its lock, and the workers forked meanwhile would deadlock on it."""
    watched = os.dup(fd)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, fd)  # the rest of this process, and its workers, read nothing from ssh
    os.close(devnull)
    line = _read_line(watched)
    try:
        doc = json.loads(line)
        config, hosts = doc["config"], HostList(tuple(h for h, _ in doc["hosts"]),
                                                tuple(int(s) for _, s in doc["hosts"]))
        key = secure.RunKey.from_secret(doc["key"]) if doc.get("key") else None
    except (ValueError, KeyError, TypeError, DsimError):
        raise DsimError("--spawned reads its run on stdin, as `dsim launch --launcher ssh` sends it") from None
    threading.Thread(target=_stop_on_eof, args=(watched,), name="dsim-stdin", daemon=True).start()
    return resolve(None, config), hosts, key


def _read_line(fd: int) -> bytes:
    """Bytes up to the first newline, read one at a time so that nothing after it is consumed."""
    data = bytearray()
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 1)
        if not chunk:
            break
        data += chunk
    return bytes(data)


def _stop_on_eof(fd: int) -> None:
    """The launcher that started us is gone: stop the run as on Ctrl-C (a coordinator stops every machine,
    a follower reaps its workers); if that takes too long, end the workers, then this process."""
    with contextlib.suppress(OSError):
        while os.read(fd, 65536):
            pass
    with contextlib.suppress(OSError):  # os.write: no lock that a fork at this moment could inherit
        os.write(2, b"dsim: the launcher that started this machine is gone (its ssh session or machine 0 "
                    b"ended): stopping\n")
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(STOP_WAIT * 0.3)
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            child.terminate()
    time.sleep(STOP_WAIT * 0.5)
    os._exit(130)  # workers die with us (PR_SET_PDEATHSIG)


# --- the side of machine 0 ---------------------------------------------------------------------------

def check_reachable(machines: Sequence[Machine], opts: Sequence[str], cwd: str, script: str) -> None:
    """Before anything starts: every machine answers over ssh and has this directory and dsim script,
    so an unreachable host or a missing install is one line (exit 2) and not a run that times out."""
    probe = f"cd {shlex.quote(cwd)} && test -x {shlex.quote(script)}"
    procs = [(m, subprocess.Popen(ssh_argv(m.host, opts, probe), stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True))
             for m in machines]
    try:
        for m, proc in procs:
            try:
                _, err = proc.communicate(timeout=CHECK_TIMEOUT)
            except subprocess.TimeoutExpired:
                raise DsimError(f"machine {m.index} ({m.host}) did not answer over ssh in "
                                f"{CHECK_TIMEOUT:g} s") from None
            if proc.returncode == 255:
                raise DsimError(f"cannot reach machine {m.index} ({m.host}) over ssh: "
                                f"{_last_line(err) or 'ssh failed'} (ssh {shlex.join(with_defaults(opts))})")
            if proc.returncode != 0:
                raise DsimError(f"machine {m.index} ({m.host}) has no {cwd} or no {script}: --launcher ssh "
                                f"runs the same paths on every machine")
    finally:
        for _, proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def _last_line(data: bytes) -> str:
    lines = [line.strip() for line in data.decode(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def launch_over_ssh(cfg: Config, hosts: str, ssh_opts: str, quiet: bool) -> int:
    """Run the experiment on every machine of the hosts file from here; returns the run's exit code."""
    from dsim.launch import plan_launch

    plan = plan_launch(cfg, hosts, 0, ships_keys=True)  # what machine 0 would refuse is refused before any ssh
    opts, script, cwd = parse_opts(ssh_opts), dsim_script(), os.getcwd()
    others = plan.machines[1:]
    check_reachable(others, opts, cwd, script)
    Console(quiet=quiet).say(f"dsim: starting {len(others)} more machine{'s' if len(others) > 1 else ''} over "
                             f"ssh: {', '.join(m.host for m in others)}")
    fleet = Fleet(cfg, plan.machines, opts, script, cwd, quiet, f"tcp://{plan.host_ip}:{cfg.net.master_port}",
                  plan.key)
    return fleet.run()


@dataclass
class Session:
    """One machine's launcher started from here, and the last error line it printed."""

    machine: Machine
    proc: subprocess.Popen
    relays: list[threading.Thread] = field(default_factory=list)
    last_error: str = ""
    reported: bool = False


class Fleet:
    """The launchers of every machine, started from here; whatever happens, none is left running."""

    def __init__(self, cfg: Config, machines: list[Machine], opts: list[str], script: str, cwd: str,
                 quiet: bool, master: str, key: secure.RunKey | None = None) -> None:
        self.cfg, self.machines, self.opts, self.script, self.cwd = cfg, machines, opts, script, cwd
        self.quiet, self.master, self.key = quiet, master, key
        self.sessions: list[Session] = []
        self.interrupted = False
        self._lost: Any = None  # a ZeroMQ socket to the coordinator, made when a machine fails

    def run(self) -> int:
        previous = signal.signal(signal.SIGINT, self._interrupt)
        try:
            for machine in self.machines:
                self._start(machine)
            local = self.sessions[0].proc
            while local.poll() is None:
                self._watch()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    local.wait(0.1)
            self._let_finish()
        finally:
            signal.signal(signal.SIGINT, previous)
            self._end_all()
        return self.exit_code()

    def _start(self, machine: Machine) -> None:
        argv = launcher_argv(self.script, machine.index, self.quiet or machine.index > 0)
        pipes: dict[str, Any] = {"stdin": subprocess.PIPE, "start_new_session": True}  # Ctrl-C comes via us
        if machine.index == 0:
            proc = subprocess.Popen(argv, cwd=self.cwd, **pipes)
        else:
            command = ssh_argv(machine.host, self.opts, remote_command(argv, self.cwd))
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **pipes)
        session = Session(machine, proc)
        self.sessions.append(session)
        if machine.index > 0:
            for stream, out, errors in ((proc.stdout, sys.stdout, False), (proc.stderr, sys.stderr, True)):
                relay = threading.Thread(target=_relay, args=(stream, out, session, errors), daemon=True,
                                         name=f"dsim-relay-{machine.index}")
                relay.start()
                session.relays.append(relay)
        with contextlib.suppress(OSError):  # one that died at once is reported by its exit code
            proc.stdin.write(request(self.cfg, self.machines, machine.index, self.key))
            proc.stdin.flush()
        if machine.index == 0 and self.interrupted:
            self._interrupt()

    def _interrupt(self, *_: Any) -> None:
        """Ctrl-C: machine 0's coordinator stops the run on every machine, as without SSH."""
        self.interrupted = True
        if self.sessions and self.sessions[0].proc.poll() is None:
            self.sessions[0].proc.send_signal(signal.SIGINT)

    def _watch(self) -> None:
        """A machine whose launcher ended with an error while machine 0 runs: the coordinator must know."""
        for session in self.sessions[1:]:
            code = session.proc.poll()
            if code is None or session.reported:
                continue
            session.reported = True
            if code != 0:
                what = "ssh" if code == 255 else "its launcher"
                detail = f": {session.last_error}" if session.last_error else ""
                self._tell_lost(session.machine.index,
                                f"{session.machine.host}: {what} exited with code {code}{detail}")

    def _tell_lost(self, machine: int, reason: str) -> None:
        import zmq  # only here: this process forks nothing, so a context is safe

        if self._lost is None:
            self._lost = zmq.Context().socket(zmq.DEALER)
            self._lost.setsockopt(zmq.LINGER, 1000)
            secure.dial(self._lost, self.key)
            self._lost.connect(self.master)
        with contextlib.suppress(zmq.ZMQError):
            self._lost.send(control.encode(control.Lost(machine=machine, reason=reason)), flags=zmq.NOBLOCK)

    def _let_finish(self) -> None:
        """Machine 0 has ended: the others got the summary and end too; those that do not (they never
        reached the coordinator) are told by closing their stdin, and given time to stop."""
        others = [s.proc for s in self.sessions[1:]]
        _wait_all(others, GRACE)
        for proc in others:
            if proc.poll() is None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
        _wait_all(others, STOP_WAIT)

    def _end_all(self) -> None:
        for session in self.sessions:
            proc = session.proc
            if proc.poll() is None:
                proc.terminate()  # an ssh client that ends closes the remote stdin: that machine stops
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            with contextlib.suppress(OSError):
                proc.stdin.close()
            for relay in session.relays:
                relay.join(5)
        if self._lost is not None:
            self._lost.close(linger=0)
            self._lost.context.term()

    def exit_code(self) -> int:
        """Machine 0's code (the run's outcome), else the first failed machine's."""
        codes = [_shell_code(s.proc.returncode) for s in self.sessions]
        return next((code for code in codes if code != 0), 0) if codes else 1


def _wait_all(procs: Sequence[subprocess.Popen], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(max(0.0, deadline - time.monotonic()))


def _shell_code(code: int | None) -> int:
    """Killed by a signal: 128 + its number, as a shell says; ssh's own failure (255): 1, a failed run."""
    if code is None or code == 255:
        return 1
    return 128 - code if code < 0 else code


def _relay(stream: IO[bytes], out: IO[str], session: Session, errors: bool) -> None:
    """Copy a remote machine's lines, each after its host's name; remember its last error line."""
    prefix = f"[{session.machine.host}] "
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace").rstrip("\r\n")
        if errors and line.strip():
            session.last_error = line.strip()
        with _OUTPUT, contextlib.suppress(OSError, ValueError):
            out.write(prefix + line + "\n")
            out.flush()
