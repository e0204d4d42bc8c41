"""compare_links.py's one `dsim launch` and the per-client figures of its run directory (grids of runs
without per-algorithm settings are `dsim launch --sweep`; see README, Sweeps)."""

from __future__ import annotations

import csv
import json
import statistics
import subprocess
from pathlib import Path


def launch(dsim: Path, run_dir: Path, args: list[str], *, resume: bool = False) -> dict:
    """Run `dsim launch ARGS --out RUN_DIR --quiet` (or, with `resume`, read a run that already finished);
    returns its summary plus `client_rows` (the clients' bandwidth.csv rows) and `client_bytes` (their
    mean bytes sent + received)."""
    if resume and (run_dir / "summary.json").exists():
        print(f"# {run_dir} done before", flush=True)
    else:
        cmd = [str(dsim), "launch", *args, "--out", str(run_dir), "--quiet"]
        print("$", " ".join(cmd), flush=True)
        if subprocess.run(cmd).returncode != 0:
            raise SystemExit(f"{run_dir} failed; see its summary.json")
    summary = json.loads((run_dir / "summary.json").read_text())
    with open(run_dir / "bandwidth.csv") as fh:
        summary["client_rows"] = [r for r in csv.DictReader(fh) if r["role"] == "client"]
    summary["client_bytes"] = statistics.fmean(int(r["bytes_sent"]) + int(r["bytes_recv"])
                                               for r in summary["client_rows"])
    return summary
