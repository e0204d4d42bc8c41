"""The resolved configuration: defaults < config file < CLI flags < --set, typed and checked at once.

`Config` declares the core keys and composes the tables each layer declares for itself: `[net]` here,
`[graph]` in topologies, `[data]` in dsim.data (the dataset and every registered partitioner's
parameters), `[links]` in dsim.links (the emulated links) and the chosen program's own table.
`resolve` merges the raw values and converts them in one pass, so every bad key or value, for any
program, is refused with one line before anything starts. The resolved struct is what nodes read
(typed: no casts), what `config.toml` holds and what the start-up fingerprint hashes, so two machines
can only run together when they resolved the same experiment.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import re
import tomllib
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, ClassVar, Literal

import msgspec
from msgspec import Meta

from dsim.churn import ChurnOptions, StragglerOptions
from dsim.data.options import DataOptions
from dsim.errors import DsimError
from dsim.links import LinksOptions
from dsim.options import Options, commented_toml, convert, to_dict
from dsim.program import Program
from dsim.topologies.options import GraphOptions

EventLoop = Literal["auto", "uvloop", "asyncio"]
Secure = Literal["auto", "on", "off"]
Scheduler = Literal["batch", "normal"]
NativeIO = Literal["auto", "on", "off"]
_PORTS = re.compile(r"^(\d+)-(\d+)$")
DEFAULT_ALGORITHM = "collabdm"
_DEVICE = r"^(auto|cpu|cuda|cuda:\d+)$"
_GPUS = r"^(\d+(,\d+)*)?$"


class NetOptions(Options):
    """Sockets, start-up and supervision of the node processes."""

    host: Annotated[str, Meta(min_length=1, description="address node sockets bind to on this machine")] = "127.0.0.1"
    ports: Annotated[str, Meta(description="LO-HI restricts the worker processes' sockets (one port each) to a port range; '' = OS-chosen")] = ""
    master_port: Annotated[int, Meta(ge=1024, le=65535, description="machine 0's coordinator port (runs over many machines); clear of torchrun's 29400 and torch.distributed's 29500")] = 29750
    max_message_mb: Annotated[float, Meta(gt=0, description="largest message a node may send or accept, MiB")] = 512.0
    heartbeat: Annotated[float, Meta(gt=0, description="seconds between a worker's heartbeats")] = 0.5
    heartbeat_timeout: Annotated[float, Meta(gt=0, description="seconds of silence after which a process counts as dead")] = 60.0
    start_timeout: Annotated[float, Meta(gt=0, description="seconds allowed for registration, links and the start barrier")] = 120.0
    message_log: Annotated[bool, Meta(description="write every message's send, receipt, relay, loss or drop to messages/<process>.csv (who sent what to whom, when; what `dsim report` draws the timeline from)")] = True
    event_loop: Annotated[EventLoop, Meta(description="node processes' loop: auto (uvloop when installed), uvloop or asyncio")] = "auto"
    scheduler: Annotated[Scheduler, Meta(description="Linux CPU scheduling of the node processes: batch (SCHED_BATCH: a process woken by a message does not preempt a running one, so each wake-up handles more messages; about a fifth more 1 KB messages per second with 8 processes on 2 cores) or normal (prompter wake-ups under CPU contention, for emulated latencies that must hold to the millisecond on a busy machine)")] = "batch"
    native_io: Annotated[NativeIO, Meta(description="the small-message path's ZeroMQ calls: auto (dsim's compiled module when it was built at install, else pyzmq's), on (the compiled module, or refuse to start) or off (pyzmq's only); the same frames either way")] = "auto"
    secure: Annotated[Secure, Meta(description="CurveZMQ on every socket (only the run's key holders connect; all traffic encrypted): auto (on over many machines), on or off")] = "auto"
    key_file: Annotated[str, Meta(description="the run key (`dsim keygen FILE`, mode 600) for runs over many machines not started over SSH; '' = generated per run")] = ""

    def __post_init__(self) -> None:
        if self.heartbeat_timeout <= self.heartbeat:
            raise ValueError(f"heartbeat ({self.heartbeat:g} s) must be smaller than heartbeat_timeout "
                             f"({self.heartbeat_timeout:g} s)")
        if self.event_loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
            raise ValueError("event_loop = 'uvloop' but uvloop is not installed (pip install uvloop)")
        if self.native_io == "on":
            from dsim import native

            why = native.load()[1]
            if why:
                raise ValueError(f"native_io = 'on' but {why}")
        parse_port_range(self.ports)

    @property
    def port_range(self) -> tuple[int, int] | None:
        return parse_port_range(self.ports)


class Config(Options):
    """The whole experiment. Subclassed per program (see `config_type`) to add the program's table."""

    options_table: ClassVar[str] = ""

    nodes: Annotated[int, Meta(ge=1, description="number of nodes (clients); a server program adds the server")] = 10
    topology: Annotated[str, Meta(min_length=1, description="graph: star, ring, full, regular, small-world, erdos-renyi, grid, torus, or an edge file")] = "star"
    algorithm: Annotated[str, Meta(min_length=1, description="node program: a registered name or a module path defining PROGRAM")] = DEFAULT_ALGORITHM
    seed: Annotated[int, Meta(ge=0, description="seed of everything random: graph, data split, models")] = 0
    rounds: Annotated[int, Meta(ge=0, description="rounds of round-based programs (gossip, fedavg, dpsgd, exchange)")] = 10
    out: Annotated[str, Meta(description="run directory; '' = runs/<UTC time>-<algorithm>")] = ""
    nodes_per_process: Annotated[int, Meta(ge=1, description="nodes packed into one worker process (one event loop)")] = 1
    timeout: Annotated[float, Meta(gt=0, description="seconds a node waits for a message before failing")] = 120.0
    device: Annotated[str, Meta(pattern=_DEVICE, description="where models and data live: auto (CUDA when present), cpu, cuda or cuda:N")] = "auto"
    gpus: Annotated[str, Meta(pattern=_GPUS, description="GPU indices the nodes are spread over, e.g. '0,2'; '' = every visible GPU")] = ""
    deterministic: Annotated[bool, Meta(description="bit-reproducible CUDA kernels (same seed and device, same result); false lets cuDNN pick faster ones")] = True
    graph: GraphOptions = msgspec.field(default_factory=GraphOptions)
    net: NetOptions = msgspec.field(default_factory=NetOptions)
    churn: ChurnOptions = msgspec.field(default_factory=ChurnOptions)
    stragglers: StragglerOptions = msgspec.field(default_factory=StragglerOptions)
    data: DataOptions = msgspec.field(default_factory=DataOptions)
    links: LinksOptions = msgspec.field(default_factory=LinksOptions)

    @property
    def program_options(self) -> Options | None:
        """The chosen program's own table (e.g. config.dm), or None for programs without options."""
        return getattr(self, self.options_table) if self.options_table else None



# Keys that legitimately differ between machines of one run; left out of the fingerprint.
MACHINE_LOCAL = ("out", "device", "gpus", "data.data_dir", "data.download", "net.key_file")


def config_type(program: Program) -> type[Config]:
    """Config plus the program's own table, named as the program declares (e.g. [dm])."""
    if program.options is None:
        return Config
    if program.options_table in Config.__struct_fields__:
        raise DsimError(f"program {program.name} names its table '{program.options_table}', a core key")
    return _with_table(program.options_table, program.options)


@functools.cache
def _with_table(table: str, options: type[Options]) -> type[Config]:
    return msgspec.defstruct(
        f"{table.title()}Config",
        [(table, options, msgspec.field(default_factory=options))],
        bases=(Config,), kw_only=True, frozen=True, forbid_unknown_fields=True,
        namespace={"options_table": table, "__doc__": Config.__doc__},
    )


def parse_value(text: str) -> Any:
    """Parse a --set value as a TOML value (numbers, booleans, quoted strings, arrays); else a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = dict(value) if isinstance(value, Mapping) else value


def _assignment(text: str) -> tuple[str, dict[str, Any]]:
    """One ``key.sub=value`` as (key, nested update)."""
    if "=" not in text:
        raise DsimError(f"--set expects key=value, got '{text}'")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise DsimError(f"--set expects key=value, got '{text}'")
    update: dict[str, Any] = {key.split(".")[-1]: parse_value(raw.strip())}
    for part in reversed(key.split(".")[:-1]):
        update = {part: update}
    return key, update


def load_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise DsimError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise DsimError(f"config file {path} is a directory") from None
    except tomllib.TOMLDecodeError as exc:
        raise DsimError(f"config file {path} is not valid TOML: {exc}") from None


def resolve(
    file: str | None = None,
    flags: Mapping[str, Any] | None = None,
    sets: Iterable[str] = (),
    program: Program | None = None,
) -> Config:
    """The typed config of an experiment; raises a one-line DsimError for any bad key or value.

    `program` gives the program as an object (dsim.testing runs programs no `--algorithm` name
    reaches); otherwise the `algorithm` key picks it."""
    from dsim.programs import load_program  # the algorithm decides the program's table

    raw: dict[str, Any] = {}
    _deep_merge(raw, load_toml(file) if file else {})
    _deep_merge(raw, _drop_none(flags or {}))
    for text in sets:
        _deep_merge(raw, _assignment(text)[1])
    if program is None:
        algorithm = raw.get("algorithm", DEFAULT_ALGORITHM)
        if not isinstance(algorithm, str):
            raise DsimError(f"config key 'algorithm' expects str, got {algorithm!r}")
        program = load_program(algorithm)
    return convert(config_type(program), raw)


def _drop_none(flags: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flags.items():
        if isinstance(value, Mapping):
            value = _drop_none(value)
            if value:
                out[key] = value
        elif value is not None:
            out[key] = value
    return out


def program_of(cfg: Config) -> Program:
    from dsim.programs import load_program

    return load_program(cfg.algorithm)


def parse_port_range(text: str) -> tuple[int, int] | None:
    """'' means ports chosen by the OS; 'LO-HI' restricts node sockets to that range."""
    if not text:
        return None
    match = _PORTS.match(text)
    if match is None:
        raise DsimError(f"net.ports must look like LO-HI, got '{text}'")
    lo, hi = int(match.group(1)), int(match.group(2))
    if not 1024 <= lo <= hi <= 65535:
        raise DsimError(f"net.ports range {text} must lie within 1024-65535 with LO <= HI")
    return lo, hi


def fingerprint_view(cfg: Config) -> dict[str, Any]:
    """The config without machine-local keys: what must agree across machines."""
    view = to_dict(cfg)
    for dotted in MACHINE_LOCAL:
        *parents, leaf = dotted.split(".")
        node = view
        for part in parents:
            node = node.get(part, {})
        node.pop(leaf, None)
    return view


def fingerprint(cfg: Config, graph_hash: str) -> str:
    blob = json.dumps({"config": fingerprint_view(cfg), "graph": graph_hash}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def differences(mine: Mapping[str, Any], theirs: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Human-readable list of keys whose values differ, for the refusal message."""
    out = []
    for key in sorted(set(mine) | set(theirs)):
        a, b = mine.get(key, "<missing>"), theirs.get(key, "<missing>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}={b!r} (here {a!r})")
    return out


def to_toml(cfg: Config) -> str:
    """config.toml: the resolved values, each key with its doc."""
    return commented_toml(cfg)
