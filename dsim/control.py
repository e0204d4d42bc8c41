"""Control messages between the launchers, the coordinator and the workers: one frozen type per message.

Each message is a msgpack map whose "t" field names its type, so a frame decodes to exactly one of
these classes or is refused as a whole. Unknown fields are ignored. Like `wire`, this is a floor module:
it imports nothing from dsim above `wire`, so every process can use it without pulling in the runtime.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import msgspec

from dsim.wire import WireError


class _Message(msgspec.Struct, frozen=True, kw_only=True, tag_field="t"):
    """Base of every control message; the tag (its "t" field) is set by each subclass."""


class Machine(_Message, tag="machine"):
    """Launcher of machine i > 0 -> coordinator: who I am and what I resolved, to compare before starting."""

    machine: int
    config: dict[str, Any]
    graph: str


class Accept(_Message, tag="accept"):
    """Coordinator -> launcher of machine i > 0: your settings match; the run id it joined."""

    run: str


class Refuse(_Message, tag="refuse"):
    """Coordinator -> launcher of machine i > 0: you may not join, and why."""

    reason: str


class End(_Message, tag="end"):
    """Coordinator -> launchers of machines i > 0: the run is over; its summary, for their run directories."""

    summary: dict[str, Any]


class Lost(_Message, tag="lost"):
    """Launcher of machine i > 0 -> coordinator: this machine gives up on the run, and why."""

    machine: int
    reason: str


class ProcExit(_Message, tag="proc_exit"):
    """Launcher of machine i > 0 -> coordinator: one of my worker processes exited with an error."""

    machine: int
    name: str
    ranks: list[int]
    pid: int
    code: int


class Register(_Message, tag="register"):
    """Worker -> coordinator: my nodes are bound and set up; their addresses and data fingerprints."""

    name: str
    pid: int
    ranks: list[int]
    endpoints: dict[int, str]
    data: dict[int, dict[str, str]] = {}  # rank -> {"data": whole data set's fingerprint, "part": its share's}


class Peers(_Message, tag="peers"):
    """Coordinator -> workers: every node's address; connect to your neighbours and greet them."""

    run: str
    endpoints: dict[int, str]


class Ready(_Message, tag="ready"):
    """Worker -> coordinator: all my nodes are linked to their neighbours."""

    name: str


class Start(_Message, tag="start"):
    """Coordinator -> workers: every worker is ready; run the node programs (the start barrier)."""


class Tick(_Message, tag="tick"):
    """Coordinator -> workers and launchers, every heartbeat: the coordinator is alive."""


class _Traffic(_Message):
    """Frame totals over a worker's nodes (a base of the messages that carry them)."""

    bytes_sent: int
    bytes_recv: int
    msgs_sent: int
    msgs_recv: int


TRAFFIC_FIELDS: tuple[str, ...] = _Traffic.__struct_fields__


class Steps(msgspec.Struct, array_like=True):
    """Progress of the nodes of one role in one phase (dsim.progress): each rank with its steps done."""

    role: str
    phase: str
    total: int  # the phase's steps; 0 for a phase without steps
    ranks: list[int]
    steps: list[int]


class Heartbeat(_Traffic, tag="hb"):
    """Worker's heartbeat thread -> coordinator, every heartbeat: alive, with its traffic so far and the
    progress of its nodes that changed since the last beat."""

    name: str
    progress: list[Steps] = []


class Done(_Message, tag="done"):
    """Worker -> coordinator: one node's program returned; its result."""

    name: str
    rank: int
    result: Any  # what run() returned, made JSON-safe (a dict by contract; anything else still arrives)
    device: str = "cpu"  # the torch device the node ran on
    peak_memory_mb: float = 0.0  # its process's peak memory on that device (CUDA allocator or CPU RSS)


class Failed(_Message, tag="failed"):
    """Worker -> coordinator: a node (or the worker itself) failed in a phase; the run must stop."""

    name: str
    rank: int
    reason: str
    phase: str


class Query(_Message, tag="query"):
    """Coordinator -> workers after every node is done: report your traffic totals for this wave."""

    wave: int


class Counts(_Traffic, tag="counts"):
    """Worker -> coordinator: traffic totals in answer to one query wave (counting termination)."""

    name: str
    wave: int


class Stop(_Message, tag="stop"):
    """Coordinator -> workers and launchers: stop now (finished, or the run failed), and why."""

    reason: str


class Final(_Message, tag="final"):
    """Worker -> coordinator, its last message: every node's traffic statistics."""

    name: str
    nodes: dict[int, dict[str, Any]]


Message: TypeAlias = (Machine | Accept | Refuse | End | Lost | ProcExit | Register | Peers | Ready | Start | Tick
                      | Heartbeat | Done | Failed | Query | Counts | Stop | Final)

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)


def encode(msg: Message) -> bytes:
    """One control message as one frame."""
    return _encoder.encode(msg)


def decode(frame: bytes | memoryview) -> Message:
    """The message in a frame; WireError for anything that is not exactly one of ours."""
    try:
        return _decoder.decode(frame)
    except msgspec.DecodeError as exc:  # ValidationError (well-formed, wrong shape) is a DecodeError too
        raise WireError(f"not a control message ({exc})") from None


def kind(cls: type[_Message]) -> str:
    """The tag of a message type, as it travels: how errors name what was awaited."""
    return str(cls.__struct_config__.tag)
