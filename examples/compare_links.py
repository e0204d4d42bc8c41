"""Accuracy against time and bytes when clients sit behind slow uplinks: CollabDM, LocalDM, MTT and FedAvg.

    python examples/compare_links.py --data-dir ../shared/data                 # MNIST, CPU scale
    python examples/compare_links.py --dataset digits --scale quick            # minutes, bundled data
        [--uplinks 1Mbit 10Mbit 100Mbit] [--latency 50ms] [--out runs/compare-links]

Every algorithm runs on the same split (Dirichlet beta 0.1 with CollabDM's class floor), the same
10 clients around a server and the same seed, under each client-uplink rate with the same one-way
latency on every link (`[links]`: `links.client.up`, `links.latency`). The links are emulated in real
time, so each run's wall time includes its transfers. Per run it records the final accuracy, the wall
time, the mean bytes per client and its emulated send seconds, and for FedAvg the accuracy after every
round with its time; it writes OUT/links.md, OUT/links.json and OUT/links.png (accuracy against time
and against client bytes, one panel per uplink).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import runs  # examples/ is the script's folder

HERE = Path(__file__).resolve().parent
COMMON = ["--nodes", "10", "--topology", "star", "--seed", "0", "--set", "data.partition='dirichlet'",
          "--set", "data.beta=0.1", "--set", "timeout=3600"]
# (algorithm, --set values) per scale; "cpu" follows the CPU-scale configs in examples/, "quick" is
# small enough for the bundled digits data in a few minutes per uplink.
ALGORITHMS = {
    "cpu": {
        "collabdm": ["dm.ipc=10", "dm.iterations=400", "dm.batch_real=64", "dm.mean_batch=64", "dm.width=32",
                     "dm.eval_epochs=200", "data.class_floor=10"],
        "localdm": ["dm.ipc=10", "dm.iterations=400", "dm.batch_real=64", "dm.width=32", "dm.eval_epochs=200",
                    "data.class_floor=10"],
        "mtt": ["mtt.ipc=2", "mtt.width=32", "mtt.experts=2", "mtt.expert_train_epochs=3", "mtt.iterations=200",
                "mtt.syn_steps=20", "mtt.lr_img=100", "mtt.lr_lr=1e-6", "mtt.eval_every=50",
                "mtt.client_eval_epochs=100", "mtt.search_epochs=100", "mtt.eval_epochs=300",
                "data.class_floor=10"],
        "fedavg": ["rounds=5", "fedavg.width=32", "fedavg.local_epochs=1", "data.class_floor=10"],
    },
    "quick": {
        "collabdm": ["data.class_floor=10"],
        "localdm": ["data.class_floor=10"],
        "mtt": ["mtt.ipc=2", "mtt.width=16", "mtt.experts=2", "mtt.expert_train_epochs=3", "mtt.iterations=30",
                "mtt.syn_steps=10", "mtt.lr_img=100", "mtt.lr_lr=1e-6", "mtt.eval_every=10",
                "mtt.client_eval_epochs=30", "mtt.search_epochs=30", "mtt.eval_epochs=60", "mtt.eval_models=2",
                "data.class_floor=10"],
        "fedavg": ["rounds=5", "fedavg.width=16", "fedavg.local_epochs=2", "data.class_floor=10"],
    },
}


def launch(dsim: Path, run_dir: Path, args: list[str]) -> dict:
    """One resumable `dsim launch`; adds the clients' mean emulated send seconds and the server's curve."""
    summary = runs.launch(dsim, run_dir, args, resume=True)
    summary["client_send_s"] = statistics.fmean(float(r["send_s"]) for r in summary["client_rows"])
    events = [json.loads(x) for x in (run_dir / "nodes" / "0.jsonl").read_text().splitlines() if x.strip()]
    # Round-based programs: the accuracy after each round; one-shot ones: the final score, when reached.
    summary["curve"] = [(e["t"], e["accuracy"]) for e in events
                        if e["event"] == "metric" and "round" in e and "accuracy" in e]
    if not summary["curve"] and "finished_t" in summary["results"]:
        summary["curve"] = [(summary["results"]["finished_t"], accuracy(summary))]
    return summary


def accuracy(result: dict) -> float:
    r = result["results"]
    return r.get("accuracy_mean", r.get("accuracy"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--scale", choices=sorted(ALGORITHMS), default="cpu")
    parser.add_argument("--uplinks", nargs="+", default=["1Mbit", "10Mbit", "100Mbit"])
    parser.add_argument("--latency", default="50ms")
    parser.add_argument("--out", default="runs/compare-links")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dsim = Path(sys.executable).parent / "dsim"
    data = ["--dataset", args.dataset] + (["--data-dir", args.data_dir] if args.data_dir else [])
    rows = []
    for uplink in args.uplinks:
        links = ["--set", f"links.client.up='{uplink}'", "--set", f"links.latency='{args.latency}'"]
        for algorithm, sets in ALGORITHMS[args.scale].items():
            res = launch(dsim, out / f"{algorithm}-{uplink}", ["--algorithm", algorithm, *COMMON, *data, *links,
                                                                *[x for s in sets for x in ("--set", s)]])
            rows.append({"uplink": uplink, "algorithm": algorithm, "accuracy": accuracy(res),
                         "wall_s": res["wall_time_s"], "run_s": res["timings"].get("run_s"),
                         "client_bytes": res["client_bytes"], "client_send_s": res["client_send_s"],
                         "curve": res["curve"]})
            (out / "links.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = [f"dataset {args.dataset}, scale {args.scale}, latency {args.latency} on every link, 10 clients, "
             f"Dirichlet beta 0.1; client uplink as given, everything else unlimited", "",
             "| client uplink | algorithm | accuracy % | run time s | bytes/client | emulated send s/client |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['uplink']} | {r['algorithm']} | {100 * r['accuracy']:.2f} | {r['run_s']:.1f} | "
                     f"{r['client_bytes'] / 1e3:.1f} KB | {r['client_send_s']:.2f} |")
    (out / "links.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(rows, args.uplinks, out / "links.png")
    return 0


def plot(rows: list[dict], uplinks: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(uplinks), figsize=(4.2 * len(uplinks), 7), squeeze=False)
    for col, uplink in enumerate(uplinks):
        for r in (r for r in rows if r["uplink"] == uplink):
            curve = r["curve"] or [(r["wall_s"], r["accuracy"])]
            t, acc = zip(*curve, strict=True)
            axes[0][col].plot(t, [100 * a for a in acc], marker="o", label=r["algorithm"])
            axes[1][col].scatter([r["client_bytes"] / 1e6], [100 * r["accuracy"]], label=r["algorithm"])
        axes[0][col].set(title=f"client uplink {uplink}", xlabel="time since launch (s)", ylabel="accuracy %")
        axes[1][col].set(xlabel="MB per client (sent + received)", ylabel="accuracy %", xscale="log")
        axes[0][col].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
