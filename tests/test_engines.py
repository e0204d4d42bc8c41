"""Machines started by Slurm (srun) or MPI (mpirun), the rules of --launcher, and the coordinator's port.

The rules are tested as functions of the environment; the runs are real launchers, two "machines" on
127.0.0.1 and 127.0.0.2, each given the variables srun or mpirun would give it, and one real `mpirun`
where Open MPI is installed (.ci/run installs openmpi-bin).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import psutil
import pytest

from conftest import dsim_script, read_csv, summary
from dsim.config import NetOptions
from dsim.engines import Engine, decide, detect, expand_nodelist, machine_out
from dsim.errors import DsimError
from dsim.hosts import HostList, Machine, check_local, entries, spread

# N clients and a server; plain sockets: machines started by hand share no run key (tests/test_secure.py)
RING = ["--topology", "ring", "--algorithm", "gather", "--set", "rounds=2", "--set", "net.secure=off"]
LOOPBACK = ("127.0.0.1", "127.0.0.2")


def srun_env(rank: int, size: int = 2, nodelist: str = "127.0.0.[1-2]") -> dict[str, str]:
    """What srun --ntasks-per-node=1 sets for task `rank` of a step (the variables dsim reads)."""
    return {"SLURM_JOB_ID": "42", "SLURM_STEP_ID": "0", "SLURM_PROCID": str(rank), "SLURM_NODEID": str(rank),
            "SLURM_LOCALID": "0", "SLURM_STEP_NUM_TASKS": str(size), "SLURM_NTASKS": str(size),
            "SLURM_STEP_NODELIST": nodelist, "SLURM_JOB_NODELIST": nodelist}


def mpirun_env(rank: int, size: int = 2) -> dict[str, str]:
    return {"OMPI_COMM_WORLD_RANK": str(rank), "OMPI_COMM_WORLD_SIZE": str(size),
            "OMPI_COMM_WORLD_LOCAL_RANK": str(rank)}


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without any engine's variables (the tests may run under one), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMPI_", "PMI_", "PMIX_"))}
    return {**env, **(extra or {})}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_hosts(tmp_path: Path, *lines: str) -> str:
    path = tmp_path / "hosts"
    path.write_text("".join(f"{line}\n" for line in lines))
    return str(path)


# --- the environment ----------------------------------------------------------------------------------

def test_slurm_step_gives_rank_size_and_machines() -> None:
    env = {**srun_env(1, 3, "node[01-02,07]"), "SLURM_JOB_NODELIST": "node[01-09]"}
    assert detect(env) == Engine("srun", 1, 3, ("node01", "node02", "node07"))  # the step's nodes, not the job's


def test_slurm_batch_script_alone_is_no_engine() -> None:
    """sbatch's script runs as task 0 of no step: `dsim launch` there is one machine, not machine 0 of N."""
    assert detect({"SLURM_JOB_ID": "42", "SLURM_PROCID": "0", "SLURM_NODEID": "0",
                   "SLURM_JOB_NODELIST": "node[1-4]"}) is None


def test_mpi_variables() -> None:
    assert detect(mpirun_env(1, 4)) == Engine("mpirun", 1, 4)
    assert detect({"PMI_RANK": "2", "PMI_SIZE": "3"}) == Engine("mpiexec", 2, 3)
    assert detect({**srun_env(0), **mpirun_env(1)}).name == "mpirun"  # mpirun inside an allocation
    assert detect({}) is None


@pytest.mark.parametrize("env, message", [
    ({"OMPI_COMM_WORLD_RANK": "x", "OMPI_COMM_WORLD_SIZE": "2"}, "is not a number"),
    ({"OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "2"}, "machine 2 of 2"),
    ({**srun_env(0), "SLURM_STEP_NODELIST": "node[1-", "SLURM_JOB_NODELIST": ""}, "node list"),
])
def test_bad_engine_variables(env, message) -> None:
    with pytest.raises(DsimError, match=message):
        detect(env)


def test_nodelist_expands_as_scontrol_does() -> None:
    assert expand_nodelist("gpu[08-10],cpu-a[1,3]") == ["gpu08", "gpu09", "gpu10", "cpu-a1", "cpu-a3"]


def test_nodes_spread_evenly_the_first_machines_take_the_remainder() -> None:
    assert spread(["a", "b", "c"], 7) == [("a", 3), ("b", 2), ("c", 2)]
    assert entries(HostList(("a", "b")), 6) == [("a", 3), ("b", 3)]
    assert entries(HostList(("a", "b"), (1, 5)), 6) == [("a", 1), ("b", 5)]
    with pytest.raises(DsimError, match="3 machines but the graph has only 2 nodes"):
        spread(["a", "b", "c"], 2)


def test_a_machine_must_have_its_address_and_not_only_on_loopback() -> None:
    """Under srun the machines are names: one that resolves to 127.0.1.1 on itself (Debian's /etc/hosts)
    would bind where no other machine reaches it; refused at once instead of a start-up timeout."""
    pair = [Machine(0, "node01", 2, 0), Machine(1, "node02", 2, 2)]
    with pytest.raises(DsimError, match="node01, which resolves to 127.0.1.1 here"):
        check_local(pair, 0, "127.0.1.1")
    with pytest.raises(DsimError, match="not an address of this computer"):
        check_local(pair, 1, "10.231.99.1")
    check_local([Machine(0, "127.0.0.1", 2, 0), Machine(1, "127.0.0.2", 2, 2)], 1, "127.0.0.2")
    check_local([Machine(0, "node01", 2, 0)], 0, "127.0.1.1")  # one machine: nobody else has to reach it


# --- the rules of --launcher --------------------------------------------------------------------------

def test_auto_starts_over_ssh_only_from_the_first_line_without_machine_rank(tmp_path) -> None:
    here_first = write_hosts(tmp_path, "127.0.0.1 slots=2", "10.231.99.9 slots=2")
    assert decide("auto", here_first, None, env={}).launcher == "ssh"
    assert decide("auto", here_first, 0, env={}).launcher == "none"  # started by hand on each machine
    assert decide("none", here_first, None, env={}).launcher == "none"
    assert decide("auto", None, None, env={}).launcher == "none"
    (tmp_path / "second").write_text("10.231.99.9 slots=2\n127.0.0.1 slots=2\n")
    assert decide("auto", str(tmp_path / "second"), None, env={}).launcher == "none"
    (tmp_path / "alone").write_text("127.0.0.1 slots=4\n")
    assert decide("auto", str(tmp_path / "alone"), None, env={}).launcher == "none"
    assert decide("auto", here_first, None, env=srun_env(0)).launcher == "none"  # srun started every machine


@pytest.mark.parametrize("lines, rank, message", [
    (["10.231.99.1 slots=2", "10.231.99.2 slots=2"], None, "does not list this machine"),
    (["10.231.99.1 slots=2", "127.0.0.1 slots=2"], None, "line 2 of hosts file"),
    (["10.231.99.1 slots=2", "127.0.0.1 slots=2"], 1, "line 2 of hosts file"),
])
def test_ssh_runs_from_machine_0_only(tmp_path, lines, rank, message) -> None:
    with pytest.raises(DsimError, match=message):
        decide("ssh", write_hosts(tmp_path, *lines), rank, env={})


def test_under_slurm_no_hosts_file_is_needed(tmp_path) -> None:
    start = decide("auto", None, None, env=srun_env(1))
    assert (start.launcher, start.hosts, start.machine_rank) == ("none", HostList(LOOPBACK), 1)
    assert decide("auto", None, None, env=srun_env(0, 1, "node1")).hosts is None  # one machine: as without srun


@pytest.mark.parametrize("env, lines, rank, launcher, message", [
    (srun_env(0, 3, "n[1-3]"), ["n1 slots=2", "n2 slots=2"], None, "auto", "srun started 3 machines but hosts file"),
    (mpirun_env(0, 3), ["n1 slots=2", "n2 slots=2"], None, "auto", "mpirun started 3 machines but hosts file"),
    (mpirun_env(0, 2), [], None, "auto", "pass --hosts F"),
    ({**srun_env(0, 4, "n[1-2]"), "SLURM_NODEID": "0"}, [], None, "auto", "--ntasks-per-node=1"),
    (srun_env(0), [], None, "ssh", "already started every machine"),
    (mpirun_env(1), ["n1 slots=2", "n2 slots=2"], 0, "auto", "started this as machine 1"),
])
def test_engine_combinations_refused(tmp_path, env, lines, rank, launcher, message) -> None:
    hosts = write_hosts(tmp_path, *lines) if lines else None
    with pytest.raises(DsimError, match=message):
        decide(launcher, hosts, rank, env=env)


def test_machines_started_by_one_command_write_apart() -> None:
    assert [machine_out("runs/x", r) for r in range(3)] == ["runs/x", "runs/x-m1", "runs/x-m2"]
    assert machine_out("", 1) == ""  # default run directories already end in -m<rank>


def test_default_coordinator_port_clear_of_other_launchers() -> None:
    """torchrun's rendezvous 29400, torch.distributed / DeepSpeed / Accelerate's MASTER_PORT 29500 (and the
    next few that people count up to), Ray's 6379, 8265, 10001 and worker ports 10002-19999, Linux's
    ephemeral ports from 32768."""
    port = NetOptions().master_port
    assert port not in (29400, 6379, 8265, 10001) and not 29400 <= port <= 29510
    assert not 10002 <= port <= 19999 and port < 32768


# --- real launchers -----------------------------------------------------------------------------------

def start(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen([dsim_script(), "launch", *args], cwd=tmp_path, env=clean_env(env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(procs: list[subprocess.Popen]) -> list[str]:
    errors = []
    for proc in procs:
        _, stderr = proc.communicate(timeout=120)
        errors.append(stderr)
    return errors


def test_srun_tasks_run_one_experiment_without_hosts_file(tmp_path) -> None:
    port, out = free_port(), tmp_path / "run"
    procs = [start(tmp_path, srun_env(rank), *RING, "--nodes", "6", "--set", f"net.master_port={port}",
                   "--out", str(out)) for rank in (0, 1)]
    errors = finish(procs)
    assert [p.returncode for p in procs] == [0, 0], errors
    assert summary(out)["status"] == summary(tmp_path / "run-m1")["status"] == "ok"
    hosts_of = {int(r["rank"]): r["host"] for r in read_csv(out / "bandwidth.csv")}
    assert [hosts_of[r] for r in range(7)] == [LOOPBACK[0]] * 4 + [LOOPBACK[1]] * 3  # 7 nodes: 4 + 3


def test_mpi_ranks_run_one_experiment_from_a_hosts_file(tmp_path) -> None:
    hosts, port = write_hosts(tmp_path, "127.0.0.1 slots=2", "127.0.0.2 slots=4"), free_port()
    procs = [start(tmp_path, mpirun_env(rank), *RING, "--nodes", "5", "--hosts", hosts,
                   "--set", f"net.master_port={port}", "--out", str(tmp_path / "run")) for rank in (0, 1)]
    errors = finish(procs)
    assert [p.returncode for p in procs] == [0, 0], errors
    assert summary(tmp_path / "run")["results"]["replies"] == 10
    assert (tmp_path / "run-m1" / "nodes" / "5.jsonl").exists()


def test_a_real_mpirun_starts_two_machines(tmp_path) -> None:
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        pytest.skip("mpirun is not installed (Debian: openmpi-bin; .ci/run installs it)")
    hosts, out = write_hosts(tmp_path, "127.0.0.1 slots=3", "127.0.0.2 slots=3"), tmp_path / "run"
    command = [mpirun, "--allow-run-as-root", "--oversubscribe", "-np", "2", "--host", "localhost:2",
               dsim_script(), "launch", *RING, "--nodes", "5", "--hosts", hosts,
               "--set", f"net.master_port={free_port()}", "--out", str(out)]
    res = subprocess.run(command, cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    assert summary(out)["status"] == summary(tmp_path / "run-m1")["status"] == "ok"
    assert {r["host"] for r in read_csv(out / "bandwidth.csv")} == set(LOOPBACK)


@pytest.mark.parametrize("env, lines, message", [
    (srun_env(0, 3, "127.0.0.[1-3]"), ["127.0.0.1 slots=3", "127.0.0.2 slots=3"],
     "srun started 3 machines but hosts file"),
    (mpirun_env(1, 3), ["127.0.0.1 slots=3", "127.0.0.2 slots=3"], "mpirun started 3 machines but hosts file"),
    (mpirun_env(0, 2), [], "does not tell the machines' addresses"),
])
def test_engine_world_size_disagreeing_is_one_line_and_exit_2(tmp_path, env, lines, message) -> None:
    hosts = ["--hosts", write_hosts(tmp_path, *lines)] if lines else []
    proc = start(tmp_path, env, *RING, "--nodes", "5", *hosts, "--out", str(tmp_path / "run"))
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2 and stderr.count("\n") == 1 and message in stderr, stderr
    assert not (tmp_path / "run").exists()  # refused before anything started


def test_busy_coordinator_port_is_one_line_and_exit_2(tmp_path) -> None:
    hosts = write_hosts(tmp_path, "127.0.0.1 slots=3", "127.0.0.2 slots=3")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = start(tmp_path, {}, *RING, "--nodes", "5", "--hosts", hosts, "--machine-rank", "0", "--set",
                     f"net.master_port={port}", "--out", str(tmp_path / "run"))
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2, stderr
    assert stderr == (f"dsim: error: coordinator port {port} on 127.0.0.1 is in use; choose another with "
                      f"--set net.master_port=N\n")
    assert not psutil.Process().children(recursive=True)  # nothing started, nothing left
