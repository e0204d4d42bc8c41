"""Run base, LocalDM and CollabDM with one config and compare accuracy and bytes per client.

    python examples/compare_dm.py --data-dir ../shared/data [--config examples/collabdm-mnist-cpu.toml]
                                  [--seed 0 --seed 1 ...]

Writes OUT/comparison.md (a table like the CollabDM paper's Table 2, with bytes; one block per seed)
and OUT/accuracy_vs_bytes.png; each run directory is OUT/<algorithm> (OUT/seed<N>/<algorithm> when
more than one seed is given). Several seeds show whether an ordering outlives the choice of base
images, partition and networks, which the spread over evaluation models alone does not.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ALGORITHMS = ("base", "localdm", "collabdm")
PAPER_MNIST_BETA01 = {"localdm": 96.10, "collabdm": 97.72}  # Table 2, IPC 50


def run_one(args: argparse.Namespace, algorithm: str, run_dir: Path, seed: int | None) -> dict[str, Any] | None:
    dsim = Path(sys.executable).parent / "dsim"
    sets = [*args.sets, *([f"seed={seed}"] if seed is not None else [])]
    cmd = [str(dsim), "launch", "--config", args.config, "--algorithm", algorithm, "--data-dir", args.data_dir,
           "--out", str(run_dir), "--quiet", *[x for s in sets for x in ("--set", s)]]
    print("$", " ".join(cmd), flush=True)
    if subprocess.run(cmd).returncode != 0:
        print(f"{algorithm} failed; see {run_dir}/summary.json", file=sys.stderr)
        return None
    summary = json.loads((run_dir / "summary.json").read_text())
    res = summary["results"]
    return {"algorithm": algorithm, "seed": seed,
            "mean": 100 * res["accuracy_mean"], "std": 100 * res["accuracy_std"],
            "models": res["num_eval_models"], "images": res["synthetic_images"],
            "bytes": statistics.mean(res["bytes_per_client"].values()), "wall": summary["wall_time_s"]}


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| algorithm | accuracy % (mean ± std) | eval models | global images | bytes per client | "
             "wall s | paper (IPC 50, beta 0.1) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        paper = PAPER_MNIST_BETA01.get(r["algorithm"], "-")
        lines.append(f"| {r['algorithm']} | {r['mean']:.2f} ± {r['std']:.2f} | {r['models']} | {r['images']} | "
                     f"{r['bytes'] / 1e6:.3f} MB | {r['wall']:.0f} | {paper} |")
    return "\n".join(lines)


def plot(blocks: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for label, rows in blocks.items():
        for r in rows:
            name = r["algorithm"] if len(blocks) == 1 else f"{r['algorithm']} ({label})"
            ax.errorbar(r["bytes"] / 1e6, r["mean"], yerr=r["std"], fmt="o", capsize=4, label=name)
    ax.set_xlabel("bytes sent per client (MB)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy against communication")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(HERE / "collabdm-mnist-cpu.toml"))
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", default="runs/compare-dm")
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--seed", dest="seeds", type=int, action="append", default=[],
                        help="run every algorithm with this seed (repeatable; default: the config's seed)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds: list[int | None] = list(args.seeds) or [None]
    blocks: dict[str, list[dict[str, Any]]] = {}
    text = [f"config: {args.config}"]
    for seed in seeds:
        label = "config seed" if seed is None else f"seed {seed}"
        base_dir = out if len(seeds) == 1 else out / f"seed{seed}"
        rows = []
        for algorithm in ALGORITHMS:
            row = run_one(args, algorithm, base_dir / algorithm, seed)
            if row is None:
                return 1
            rows.append(row)
        blocks[label] = rows
        text += ["", f"{label}:", "", table(rows)]
        (out / "comparison.md").write_text("\n".join(text) + "\n")  # written after every seed: nothing is lost
        print(f"{label}:\n{table(rows)}", flush=True)
    plot(blocks, out / "accuracy_vs_bytes.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
