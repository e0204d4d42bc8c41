"""The `dsim` command line: one group, one module per sub-command in dsim/commands."""

from __future__ import annotations

import importlib
import sys

import click

from dsim.errors import DsimError

COMMANDS = {
    "config": "dsim.commands.config:config",
    "launch": "dsim.commands.launch:launch",
    "topology": "dsim.commands.topology:topology",
    "partition": "dsim.commands.partition:partition",
    "keygen": "dsim.commands.keygen:keygen",
    "report": "dsim.commands.report:report",
}


class LazyGroup(click.Group):
    """Imports a sub-command only when it runs, so `dsim topology` never pays for importing torch."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name].split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dsim")
def cli() -> None:
    """dsim: decentralized learning simulator over ZeroMQ."""


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and a non-zero exit, never a traceback."""
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
