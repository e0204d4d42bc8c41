"""`dsim config`: the resolved configuration of an experiment, every key with its doc.

It is how a user discovers what can be set: the output is valid TOML that `--config` reads back.
"""

from __future__ import annotations

import click

from dsim.config import resolve, to_toml


@click.command("config")
@click.option("--algorithm", help="The node program whose table is shown (default: collabdm).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML file to apply first.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Set any config key.")
def config(algorithm: str | None, config_file: str | None, sets: tuple[str, ...]) -> None:
    """Print the resolved configuration as commented TOML."""
    click.echo(to_toml(resolve(config_file, {"algorithm": algorithm}, sets)), nl=False)
