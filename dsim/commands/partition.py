"""`dsim partition`: show which labels each node would hold, before running anything.

It goes through the same code path as the nodes themselves (`partition_for`), so what it
prints is exactly what a run with the same [data] settings, node count and seed uses.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from dsim.data.datasets import DATASETS
from dsim.data.node_data import DATASET_DEFAULTS, partition_for
from dsim.data.partitioners import PARTITIONERS, click_options, label_counts, make_partitioner

D = DATASET_DEFAULTS
_CHOICES = "; ".join(f"{name}: {cls.doc}" for name, cls in PARTITIONERS.items())


@click.command("partition")
@click.option("--dataset", type=click.Choice(DATASETS), default=D["dataset"], show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder holding the dataset files (DIR, DIR/<name>/ or torchvision's layout).")
@click.option("--download", is_flag=True, help="Fetch missing files into DATA_DIR/<name>/ "
              "(DSIM_DATA_MIRROR=URL overrides the official mirrors).")
@click.option("--partition", "method", type=click.Choice(list(PARTITIONERS)), default=D["partition"],
              show_default=True, help=f"{_CHOICES}.")
@click_options()
@click.option("--nodes", type=click.IntRange(min=1), required=True, help="Number of nodes with data.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of per-class counts per node.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also draw the label distribution as stacked bars into this PNG.")
def partition(dataset: str, data_dir: Path | None, download: bool, method: str, nodes: int, seed: int,
              as_json: bool, plot: Path | None, **params: object) -> None:
    """Print each node's label counts for a dataset, partitioner, node count and seed."""
    cfg = {"dataset": dataset, "data_dir": str(data_dir or ""), "download": download,
           "partition": method, **params}
    partitioner = make_partitioner(method, params)
    ds, parts, fingerprint = partition_for(cfg, num_parts=nodes, seed=seed)
    counts = label_counts(ds.train_y.numpy(), parts, ds.num_classes)
    title = f"{dataset}: {partitioner.describe()} over {nodes} nodes, seed {seed}"
    if as_json:
        click.echo(json.dumps(counts.tolist()))
    else:
        assigned = int(counts.sum())
        click.echo(f"# {title}; {assigned} of {len(ds.train_y)} train samples assigned; "
                   f"fingerprint {fingerprint[:16]}")
        click.echo(format_table(counts))
    if plot is not None:
        plot_counts(counts, plot, title)


def format_table(counts: np.ndarray) -> str:
    """Node rows x class columns, a total column and a total row, right-aligned."""
    classes = counts.shape[1]
    rows = [["node", *map(str, range(classes)), "total"]]
    rows += [[str(i), *map(str, row), str(row.sum())] for i, row in enumerate(counts)]
    rows.append(["total", *map(str, counts.sum(axis=0)), str(counts.sum())])
    widths = [max(len(r[c]) for r in rows) for c in range(classes + 2)]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(r, widths, strict=True)) for r in rows)


def plot_counts(counts: np.ndarray, path: Path, title: str) -> None:
    """The report's label chart of this partition, written to `path` (no display needed)."""
    from dsim.report.charts import label_figure

    nodes, classes = counts.shape
    fig = label_figure(counts, [str(i) for i in range(nodes)], [str(c) for c in range(classes)], title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
