"""Who starts the machines of a run, and so which machine this launcher is.

Four ways, as researchers already start multi-machine jobs (REFERENCE.md §10):

- Slurm: `srun --ntasks-per-node=1 dsim launch ...` starts one launcher per machine; the rank comes
  from SLURM_NODEID (else SLURM_PROCID), the machines from SLURM_STEP_NODELIST (else
  SLURM_JOB_NODELIST: a step may use fewer nodes than its job), so no hosts file is needed.
- MPI: `mpirun` / `mpiexec` with one rank per machine; the rank and size come from
  OMPI_COMM_WORLD_RANK / _SIZE (Open MPI) or PMI_RANK / PMI_SIZE (MPICH, Hydra, Intel MPI). MPI does not
  tell the machines' addresses, so a hosts file is required, with one line per rank.
- SSH: machine 0 starts the others itself (`dsim.ssh`).
- By hand: every machine runs the same command, as before (`--launcher none`).

`decide` applies the rules; it reads only the environment and the hosts file, so a bad combination is
refused in one line before anything starts.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

from dsim.errors import DsimError
from dsim.hosts import HostList, HostSource, find_self, parse_hosts

LAUNCHERS = ("auto", "ssh", "none")


@dataclass(frozen=True)
class Engine:
    """A job launcher that started this process as one of `size` machines."""

    name: str  # "srun" or "mpirun": what the user typed, for messages
    rank: int
    size: int
    nodes: tuple[str, ...] = ()  # the machines, where the engine names them (Slurm)


@dataclass(frozen=True)
class Start:
    """How this launcher takes part in the run."""

    launcher: str  # "ssh": start the other machines from here; "none": they are started otherwise
    hosts: HostSource | None  # None: a run on this machine alone
    machine_rank: int | None  # None: found from this machine's addresses
    engine: Engine | None = None


def expand_nodelist(text: str) -> list[str]:
    """Slurm's compressed node list (`node[01-04,07]`) as `scontrol show hostnames` prints it.

    Under Slurm, scontrol itself is the authority; where it is missing or cannot run (no slurm.conf,
    as in tests), python-hostlist (the `slurm` extra; GPL-2.0+, hence optional) reads the same syntax."""
    if shutil.which("scontrol"):
        done = subprocess.run(["scontrol", "show", "hostnames", text], capture_output=True, text=True,
                              timeout=30)
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.split()
    try:
        import hostlist
    except ImportError:
        raise DsimError(f"cannot expand Slurm's node list '{text}': scontrol did not answer and "
                        f"python-hostlist is not installed (pip install 'dsim[slurm]')") from None
    try:
        return hostlist.expand_hostlist(text)
    except hostlist.BadHostlist as exc:
        raise DsimError(f"cannot read Slurm's node list '{text}': {exc}") from None


def detect(env: Mapping[str, str] = os.environ) -> Engine | None:
    """The engine that started this process, from the variables it sets; None when started otherwise.

    Open MPI's variables come first (mpirun inside a Slurm job also inherits SLURM_* of its daemons);
    an srun step next (srun --mpi=pmi2 also sets PMI_RANK, to the same value); PMI_RANK last."""
    if "OMPI_COMM_WORLD_RANK" in env:
        return _engine(env, "mpirun", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE")
    if "SLURM_PROCID" in env and ("SLURM_STEP_ID" in env or "SLURM_STEPID" in env):
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        if not nodelist:
            raise DsimError("srun set SLURM_PROCID but no SLURM_STEP_NODELIST or SLURM_JOB_NODELIST")
        nodes = tuple(expand_nodelist(nodelist))
        rank_key = "SLURM_NODEID" if "SLURM_NODEID" in env else "SLURM_PROCID"
        size_key = next((k for k in ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS") if k in env), "")
        return _engine(env, "srun", rank_key, size_key, nodes)
    if "PMI_RANK" in env:
        return _engine(env, "mpiexec", "PMI_RANK", "PMI_SIZE")
    return None


def _engine(env: Mapping[str, str], name: str, rank_key: str, size_key: str,
            nodes: tuple[str, ...] = ()) -> Engine:
    rank = _number(env, rank_key)
    size = _number(env, size_key) if size_key in env else len(nodes)
    if not 0 <= rank < size:
        raise DsimError(f"{name} says this is machine {rank} of {size} ({rank_key}, {size_key or 'node list'})")
    return Engine(name, rank, size, nodes)


def _number(env: Mapping[str, str], key: str) -> int:
    try:
        return int(env[key])
    except KeyError:
        raise DsimError(f"{key} is not set") from None
    except ValueError:
        raise DsimError(f"{key}={env[key]!r} is not a number") from None


def decide(launcher: str, hosts: str | None, machine_rank: int | None,
           env: Mapping[str, str] = os.environ) -> Start:
    """Which launcher runs, which machines there are and which one this is.

    `auto` starts the other machines over SSH when it is surely this launcher's job: no engine started
    us, the hosts file lists more than one machine, no --machine-rank was given (people starting every
    machine by hand pass it, or --launcher none), and this machine is the file's first line. Otherwise
    this launcher runs its own machine only, as with --launcher none."""
    engine = detect(env)
    if engine is not None and (engine.size > 1 or hosts):
        return _under_engine(engine, launcher, hosts, machine_rank)
    if launcher == "ssh" and not hosts:
        raise DsimError("--launcher ssh needs --hosts F: the machines to start")
    if launcher == "none" or not hosts:
        return Start("none", hosts, machine_rank)
    listed = [host for host, _ in parse_hosts(hosts)]
    if launcher == "auto":
        if len(listed) > 1 and machine_rank is None and find_self(listed) == [0]:
            return Start("ssh", hosts, 0)
        return Start("none", hosts, machine_rank)
    me = machine_rank if machine_rank is not None else _self_in(listed, hosts)
    if me != 0:
        raise DsimError(f"this machine is line {me + 1} of hosts file {hosts}, but --launcher ssh starts the run "
                        f"from machine 0, the first line")
    return Start("ssh" if len(listed) > 1 else "none", hosts, 0)


def _self_in(listed: list[str], path: str) -> int:
    matches = find_self(listed)
    if not matches:
        raise DsimError(f"hosts file {path} does not list this machine (by name or address); --launcher ssh "
                        f"starts the run from machine 0, the first line")
    if len(matches) > 1:
        raise DsimError(f"hosts file {path} names this machine on lines "
                        f"{', '.join(str(i + 1) for i in matches)}; pass --machine-rank 0")
    return matches[0]


def _under_engine(engine: Engine, launcher: str, hosts: str | None, machine_rank: int | None) -> Start:
    if launcher == "ssh":
        raise DsimError(f"--launcher ssh under {engine.name}: {engine.name} already started every machine")
    if machine_rank is not None and machine_rank != engine.rank:
        raise DsimError(f"--machine-rank {machine_rank} but {engine.name} started this as machine {engine.rank}")
    if hosts:
        listed = len(parse_hosts(hosts))
        if listed != engine.size:
            raise DsimError(f"{engine.name} started {engine.size} machines but hosts file {hosts} lists {listed}; "
                            f"start one {engine.name} task per line")
        return Start("none", hosts, engine.rank, engine)
    if not engine.nodes:
        raise DsimError(f"{engine.name} does not tell the machines' addresses: pass --hosts F with one line per "
                        f"rank ({engine.size} lines)")
    if engine.size != len(engine.nodes):
        raise DsimError(f"{engine.name} started {engine.size} tasks on {len(engine.nodes)} machines; dsim runs one "
                        f"per machine: srun --ntasks-per-node=1")
    return Start("none", HostList(engine.nodes), engine.rank, engine)


def machine_out(out: str, rank: int) -> str:
    """The run directory of machine `rank` when one command line started every machine (an engine or
    SSH): machines above 0 add -m<rank>, as default run directories do, so a shared disk keeps them apart."""
    return f"{out}-m{rank}" if out and rank > 0 else out
