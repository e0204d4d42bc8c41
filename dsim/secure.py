"""The run's key material and CurveZMQ on its sockets: one module, so no CURVE code lies elsewhere.

A secure run (`net.secure`) has one CURVE keypair, the run key. Every ROUTER (a worker's hub, the
coordinator) is a CURVE server with it, every DEALER a CURVE client with it, and a ZAP authenticator
on every context that serves admits exactly the run key's public half: a peer that does not hold the
secret half cannot complete the handshake (a plain ZeroMQ peer fails on the mechanism, a CURVE peer
with any other key fails to decrypt or is denied), and everything after the handshake, identities
included, is encrypted and authenticated per message. One keypair and not one per role or machine:
every process is a server (its ROUTER) and a client (its DEALERs) at once, so a second pair would lie
in the same memory on every machine and prove nothing more; a machine holding any key of the run is
inside the run anyway, and the hub still checks each peer against the peer table.

Where the key comes from (`run_key`): generated in memory by the launcher that starts the run (workers
get it through the fork; the SSH launcher sends it with the config on stdin), or read from a key file
(`net.key_file`, zmq's certificate format, `dsim keygen FILE`) that the user placed on every machine,
refused unless only its owner may read it. It is never written to config.toml or summary.json, never on
a command line or in the environment.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import parse_monitor_message

from dsim.errors import DsimError

ZAP_DOMAIN = "dsim"
CURVE_OVERHEAD = 64  # bytes CURVE adds to a frame on the wire (33), rounded up: MAXMSGSIZE counts them
_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
           | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
_PROTOCOL_REASONS = {
    zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH: "a plain (not CURVE) ZeroMQ peer",
    zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC: "a peer without the run key",
}


@dataclass(frozen=True)
class RunKey:
    """A CURVE keypair, both halves Z85-encoded (40 characters). Its repr never shows the secret."""

    public: bytes
    secret: bytes

    def __repr__(self) -> str:
        return f"RunKey(public={self.public.decode()!r})"

    @classmethod
    def from_secret(cls, secret: bytes | str) -> RunKey:
        raw = secret.encode() if isinstance(secret, str) else secret
        try:
            return cls(zmq.curve_public(raw), raw)
        except (zmq.ZMQError, ValueError):
            raise DsimError("not a CURVE secret key (40 Z85 characters)") from None


def generate() -> RunKey:
    public, secret = zmq.curve_keypair()
    return RunKey(public, secret)


def enabled(setting: str, machines: int) -> bool:
    """`auto`: on whenever the run spans more than one machine."""
    return setting == "on" or (setting == "auto" and machines > 1)


def run_key(setting: str, key_file: str, machines: int, shipped: RunKey | None = None,
            launcher_ships: bool = False) -> RunKey | None:
    """This launcher's run key, or None for plain sockets; refuses (one line, exit 2) a run over many
    machines that has no way to give them all the same key.

    `shipped`: the key machine 0's SSH launcher sent on stdin; `launcher_ships`: this is that launcher,
    and will send whatever it returns."""
    if not enabled(setting, machines):
        return None
    if shipped is not None:
        return shipped
    if key_file:
        return read_key_file(key_file)
    if machines == 1 or launcher_ships:
        return generate()
    raise DsimError(f"net.secure is {setting} for a run over {machines} machines, which must share its key: "
                    f"make one with `dsim keygen FILE`, copy it to every machine (mode 600) and --set "
                    f"net.key_file=FILE, or start them all with --launcher ssh, or --set net.secure=off "
                    f"on a network you trust")


# --- key files ------------------------------------------------------------------------------------

def write_key_file(path: str | os.PathLike, key: RunKey) -> None:
    """A new key file in zmq's certificate format, readable by its owner only; never overwrites."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise DsimError(f"{path} exists: choose another path (a key file is never overwritten)") from None
    except OSError as exc:
        raise DsimError(f"cannot create {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as fh:
        fh.write(f"#   dsim run key, made {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC\n"
                 f"#   ZeroMQ CURVE **Secret** Certificate: keep it mode 600, give it to no one\n\n"
                 f"metadata\ncurve\n    public-key = \"{key.public.decode()}\"\n"
                 f"    secret-key = \"{key.secret.decode()}\"\n")


def read_key_file(path: str | os.PathLike) -> RunKey:
    """The run key from a key file; refused when group or others may access it, as ssh refuses keys."""
    path = os.path.expanduser(path)
    try:
        info = os.stat(path)
    except OSError as exc:
        raise DsimError(f"net.key_file {path}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise DsimError(f"net.key_file {path} is not a file")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise DsimError(f"net.key_file {path} is open to other users (mode {mode:03o}): chmod 600 {path}")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError):
        public, secret = None, None
    if not public or not secret:
        raise DsimError(f"net.key_file {path} holds no CURVE keypair (make one with `dsim keygen FILE`)")
    key = RunKey.from_secret(secret)
    if key.public != public:
        raise DsimError(f"net.key_file {path}: its public key does not belong to its secret key")
    return key


# --- sockets --------------------------------------------------------------------------------------

def serve(sock: zmq.Socket, key: RunKey | None, max_bytes: int | None = None) -> None:
    """Make a ROUTER a CURVE server of the run (before it binds); no-op without a key.

    `max_bytes`: the socket's MAXMSGSIZE, raised by CURVE's per-frame overhead so the same messages fit."""
    if key is None:
        return
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_SECRETKEY, key.secret)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, key.public)
    sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())
    if max_bytes is not None:
        sock.setsockopt(zmq.MAXMSGSIZE, max_bytes + CURVE_OVERHEAD)


def dial(sock: zmq.Socket, key: RunKey | None) -> None:
    """Make a DEALER a CURVE client of the run (before it connects); no-op without a key."""
    if key is None:
        return
    sock.setsockopt(zmq.CURVE_SERVERKEY, key.public)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, key.public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, key.secret)


class _Admit:
    """The authenticator's credentials provider: the run key's public half and nothing else."""

    def __init__(self, public: bytes) -> None:
        self.public = public

    def callback(self, domain: str, key: bytes) -> bool:
        return domain == ZAP_DOMAIN and key == self.public


class Gate:
    """The ZAP authenticator of one context (in its own thread, so a busy event loop delays no
    handshake). Start it before the context's ROUTER binds; stop it before the context terminates."""

    def __init__(self, ctx: zmq.Context, key: RunKey | None) -> None:
        self._auth: ThreadAuthenticator | None = None
        if key is not None:
            self._auth = ThreadAuthenticator(zmq.Context.shadow(ctx.underlying))
            self._auth.start()
            self._auth.configure_curve_callback(ZAP_DOMAIN, credentials_provider=_Admit(key.public))

    def stop(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None


class HandshakeWatch:
    """Reports every connection a secure socket refused, with why, through `on_failure(reason)`.

    A socket monitor sees what the application never does: a refused peer's frames are discarded by
    ZeroMQ before any reach the socket. A peer that keeps reconnecting is refused, and reported, each
    time. Without a key it watches nothing."""

    def __init__(self, sock: zmq.Socket, key: RunKey | None) -> None:
        self._monitor: zmq.Socket | None = None
        self._sock = sock
        self._loop: asyncio.AbstractEventLoop | None = None
        if key is not None:
            monitor = sock.get_monitor_socket(_FAILED)
            self._monitor = zmq.Socket.shadow(monitor.underlying)
            self._owner = monitor  # keeps the monitor socket alive: the shadow does not own it

    def start(self, loop: asyncio.AbstractEventLoop, on_failure: Callable[[str], None]) -> None:
        """Report from now on, from `loop`, including refusals already queued."""
        if self._monitor is None:
            return
        self._loop, self._on_failure = loop, on_failure
        loop.add_reader(self._monitor.getsockopt(zmq.FD), self._drain)
        loop.call_soon(self._drain)

    def _drain(self) -> None:
        if self._monitor is None:
            return
        while True:
            try:
                event = parse_monitor_message(self._monitor.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return
            self._on_failure(refusal(int(event["event"]), int(event["value"])))

    def close(self) -> None:
        if self._monitor is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(self._monitor.getsockopt(zmq.FD))
        self._sock.disable_monitor()
        self._owner.close(linger=0)
        self._monitor = None


def refusal(event: int, value: int) -> str:
    """Why a handshake failed, in words, from a monitor event and its value."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return f"failed the CURVE handshake: key not admitted (ZAP status {value})"
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        who = _PROTOCOL_REASONS.get(value, f"a malformed handshake (ZMTP protocol error {value:#x})")
        return f"failed the CURVE handshake: {who}"
    return "failed the CURVE handshake: the peer broke it off (a plain peer may, on seeing CURVE asked)"

