"""Where every benchmark writes its figures: benchmarks/results/<name>.json."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def write_results(name: str, data: Any) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps(data, indent=2) + "\n")
    return out


def merged(name: str, entries: dict[str, dict], config: dict) -> dict:
    """The results file with this run's device entries replacing those of the same name: figures of
    a device not measured this time (a GPU, on a CPU-only machine) are kept."""
    path = RESULTS / f"{name}.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    devices = old.get("devices", {}) if isinstance(old, dict) else {}
    return {"config": config, "devices": {**devices, **entries}}


def git_commit() -> str | None:
    """The commit the figures were measured at (None outside a git checkout)."""
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=Path(__file__).parent)
    return done.stdout.strip() or None
