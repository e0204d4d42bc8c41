"""`dsim report`: a self-contained HTML page (with PNGs beside it) from run directories."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("report")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="HTML file to write; default RUN_DIR/report.html for one directory (required for several). "
                   "PNGs of every chart go beside it.")
def report(run_dirs: tuple[Path, ...], out: Path | None) -> None:
    """Report on one run, or compare several (a folder of runs, e.g. a sweep, stands for its runs)."""
    from dsim.report.build import build_report

    page, pngs = build_report(list(run_dirs), out)
    click.echo(f"dsim: wrote {page} and {len(pngs)} PNG files beside it")
