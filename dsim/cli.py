"""The `dsim` command line: one group, one module per sub-command in dsim/commands."""

from __future__ import annotations

import sys

import click

from dsim.errors import DsimError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dsim")
def cli() -> None:
    """dsim: decentralized learning simulator over ZeroMQ."""


def _register() -> None:
    from dsim.commands import launch, partition, topology

    cli.add_command(launch.launch)
    cli.add_command(topology.topology)
    cli.add_command(partition.partition)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and a non-zero exit, never a traceback."""
    _register()
    try:
        cli.main(args=argv, prog_name="dsim", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("dsim: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"dsim: error: {exc.format_message()}", err=True)
        sys.exit(2)
    except DsimError as exc:
        click.echo(f"dsim: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("dsim: interrupted", err=True)
        sys.exit(130)
