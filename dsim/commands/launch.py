"""`dsim launch`: run an experiment. Flags override the config file; --set reaches any key.

Over many machines, `dsim.engines.decide` tells who starts them (srun, mpirun, SSH from here, or a
person on each) and which one this is; `--launcher ssh` hands the run to `dsim.ssh`.
"""

from __future__ import annotations

import sys

import click
import msgspec

from dsim.config import resolve
from dsim.data.partitioners import PARTITIONERS, click_options, pop_partition_params
from dsim.engines import LAUNCHERS, Start, decide, machine_out
from dsim.errors import DsimError


@click.command("launch")
@click.option("--nodes", type=int, help="Number of (client) nodes; a star adds its hub as the server.")
@click.option("--topology", help="star, ring, full, regular, small-world, erdos-renyi, grid, torus, or an edge file.")
@click.option("--algorithm", help="The node program, e.g. collabdm, localdm, base, mtt, fedavg, dpsgd, gossip.")
@click.option("--seed", type=int, help="Seed of everything random (graph, data split, models).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML file with any options.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Set any config key, e.g. graph.degree=6.")
@click.option("--sweep", "sweeps", multiple=True, metavar="KEY=V1,V2,...",
              help="Run every combination of these values of any --set key, one run after another, each in "
                   "its own directory under --out (default runs/<UTC time>-sweep-<algorithm>); resumable.")
@click.option("--out", help="Run directory (default runs/<UTC time>-<algorithm>).")
@click.option("--hosts", type=click.Path(dir_okay=False), help="Hosts file: one 'HOST slots=N' per line.")
@click.option("--machine-rank", type=int, help="This machine's line in the hosts file (0-based); else detected.")
@click.option("--launcher", type=click.Choice(LAUNCHERS), default="auto", show_default=True,
              help="ssh: start every machine of --hosts from here (machine 0); none: this machine only. auto: "
                   "ssh from the hosts file's first line when no --machine-rank is given and no srun/mpirun "
                   "started us.")
@click.option("--ssh-opts", default="", metavar="OPTS", help='Options for ssh, e.g. "-i KEY -p 2222".')
@click.option("--spawned", is_flag=True, hidden=True, help="Started by --launcher ssh: the run comes on stdin.")
@click.option("--nodes-per-process", type=int, help="Pack this many asyncio nodes into each process.")
@click.option("--device", help="auto (CUDA when present), cpu, cuda or cuda:N; --set gpus=0,2 picks GPUs.")
@click.option("--dataset", help="digits, mnist, fashion-mnist, cifar10 or synthetic.")
@click.option("--data-dir", help="Folder with the dataset files.")
@click.option("--download", is_flag=True, default=None, help="Fetch missing dataset files (checksummed).")
@click.option("--partition", type=click.Choice(sorted(PARTITIONERS)), help="How the train set is split.")
@click_options(defaults=False)
@click.option("--dry-run", is_flag=True, help="Resolve and check everything, print the plan, start nothing.")
@click.option("--quiet", is_flag=True, help="No progress line or closing table (failures are still shown).")
def launch(config_file, sets, sweeps, hosts, machine_rank, launcher, ssh_opts, spawned, quiet, dry_run, dataset, data_dir,
           download, partition, **flags) -> None:
    """Run node processes on a graph and write the run directory."""
    if sweeps:
        sys.exit(_sweep(sweeps, config_file, sets, hosts, machine_rank, launcher, spawned, quiet, dry_run,
                        {"dataset": dataset, "data_dir": data_dir, "download": download, "partition": partition,
                         **pop_partition_params(flags)}, flags))
    key = None  # the run key, when machine 0's SSH launcher sent one
    if spawned:
        from dsim import ssh

        cfg, shipped, key = ssh.receive(sys.stdin.fileno())
        start = Start("none", shipped, machine_rank)
    else:
        data = {"dataset": dataset, "data_dir": data_dir, "download": download, "partition": partition,
                **pop_partition_params(flags)}
        cfg = resolve(config_file, {**flags, "data": data}, sets)
        start = decide(launcher, hosts, machine_rank)
    if start.engine is not None:  # one command line started every machine: keep their run directories apart
        cfg = msgspec.structs.replace(cfg, out=machine_out(cfg.out, start.engine.rank))
    if dry_run:
        from dsim.dryrun import dry_run as show_plan

        show_plan(cfg, hosts=start.hosts, machine_rank=start.machine_rank, ships_keys=start.launcher == "ssh")
        return
    if start.launcher == "ssh":
        from dsim.ssh import launch_over_ssh

        sys.exit(launch_over_ssh(cfg, hosts, ssh_opts, quiet))
    from dsim.launch import launch as run_launch

    code, _ = run_launch(cfg, hosts=start.hosts, machine_rank=start.machine_rank, quiet=quiet, key=key)
    sys.exit(code)


def _sweep(sweeps, config_file, sets, hosts, machine_rank, launcher, spawned, quiet, dry_run, data, flags) -> int:
    """--sweep: every point of the grid on this machine (dsim.sweep plans, resumes and records them)."""
    from dsim import sweep

    if spawned or hosts or machine_rank is not None or decide(launcher, None, None).engine is not None:
        raise DsimError("--sweep runs every point on this machine; --hosts, --machine-rank and srun/mpirun "
                        "are not supported with it (run one dsim launch per point there)")
    axes = sweep.parse_axes(sweeps)
    parent, points = sweep.plan_sweep(axes, config_file, {**flags, "data": data}, sets)
    if dry_run:
        for line in sweep.dry_run(parent, axes, points):
            click.echo(line)
        return 0
    return sweep.run_sweep(axes, parent, points, quiet=quiet)
