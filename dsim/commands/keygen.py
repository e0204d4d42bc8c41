"""`dsim keygen FILE`: a run key for runs over many machines that are not started over SSH.

Copy the file to every machine (mode 600, as written) and pass `--set net.key_file=FILE`; with
`--launcher ssh` no file is needed (each run makes its own key and sends it along).
"""

from __future__ import annotations

import click

from dsim import secure


@click.command("keygen")
@click.argument("path", metavar="FILE", type=click.Path(dir_okay=False))
def keygen(path: str) -> None:
    """Write a new CurveZMQ run key to FILE (mode 600; an existing file is never overwritten)."""
    secure.write_key_file(path, secure.generate())
    click.echo(f"dsim: wrote a run key to {path} (mode 600): copy it to every machine, keeping the mode, "
               f"and --set net.key_file={path}", err=True)
