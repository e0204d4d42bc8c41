"""Run base, LocalDM and CollabDM with one config and compare accuracy and bytes per client.

    python examples/compare_dm.py --data-dir ../shared/data [--config examples/collabdm-mnist-cpu.toml]

Writes OUT/comparison.md (a table like the CollabDM paper's Table 2, with bytes) and
OUT/accuracy_vs_bytes.png; each algorithm's run directory is OUT/<algorithm>.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ALGORITHMS = ("base", "localdm", "collabdm")
PAPER_MNIST_BETA01 = {"localdm": 96.10, "collabdm": 97.72}  # Table 2, IPC 50


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(HERE / "collabdm-mnist-cpu.toml"))
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", default="runs/compare-dm")
    parser.add_argument("--set", dest="sets", action="append", default=[])
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dsim = Path(sys.executable).parent / "dsim"
    rows = []
    for algorithm in ALGORITHMS:
        run_dir = out / algorithm
        cmd = [str(dsim), "launch", "--config", args.config, "--algorithm", algorithm, "--data-dir", args.data_dir,
               "--out", str(run_dir), "--quiet", *[x for s in args.sets for x in ("--set", s)]]
        print("$", " ".join(cmd), flush=True)
        if subprocess.run(cmd).returncode != 0:
            print(f"{algorithm} failed; see {run_dir}/summary.json", file=sys.stderr)
            return 1
        summary = json.loads((run_dir / "summary.json").read_text())
        res = summary["results"]
        per_client = list(res["bytes_per_client"].values())
        rows.append({"algorithm": algorithm, "mean": 100 * res["accuracy_mean"], "std": 100 * res["accuracy_std"],
                     "models": res["num_eval_models"], "images": res["synthetic_images"],
                     "bytes": statistics.mean(per_client), "wall": summary["wall_time_s"]})
    lines = ["| algorithm | accuracy % (mean ± std) | eval models | global images | bytes per client | "
             "wall s | paper (IPC 50, beta 0.1) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        paper = PAPER_MNIST_BETA01.get(r["algorithm"], "-")
        lines.append(f"| {r['algorithm']} | {r['mean']:.2f} ± {r['std']:.2f} | {r['models']} | {r['images']} | "
                     f"{r['bytes'] / 1e6:.3f} MB | {r['wall']:.0f} | {paper} |")
    table = "\n".join(lines)
    (out / "comparison.md").write_text(f"config: {args.config}\n\n{table}\n")
    print(table)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for r in rows:
        ax.errorbar(r["bytes"] / 1e6, r["mean"], yerr=r["std"], fmt="o", capsize=4, label=r["algorithm"])
    ax.set_xlabel("bytes sent per client (MB)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy against communication")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_bytes.png", dpi=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
