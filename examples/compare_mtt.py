"""Run base and distilled (MTT) sharing and FedAvg on the same data and write a table like Table I.

    python examples/compare_mtt.py --data-dir ../shared/data [--config examples/mtt-mnist-cpu.toml]
        [--fedavg-config examples/fedavg-mnist-cpu.toml] [--shards 2 5 10] [--ipc 1 10] [--set k=v ...]
        [--settings paper|config]

For every shard count: `mtt` with mode "base" and mode "distilled" for every IPC, then `fedavg` with
the FedAvg config's training settings ([fedavg], rounds) on the MTT config's nodes, topology, seed,
data split and model, so all columns see the same partition and the same network. With `--settings paper` (the default for a CIFAR-10 config) each cell gets
the MTT hyper-parameters of its setting, as the paper ran them: per IPC the student steps N, expert
epochs M and latest start epoch T+ of the MTT reference (IPC 1: N=50, T+=2; IPC 10: N=30, T+=20), and
per shard count the learned-lr step lr_lr the paper states (2 shards 1e-7, 5 and 10 shards 1e-6);
`--settings config` keeps the config's values in every cell (the CPU-scale default). Bytes per node
are the mean bytes sent + received per client, from each run's bandwidth.csv. Writes
OUT/comparison.md and OUT/comparison.json; each run's directory is OUT/<run name>.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tomllib
from pathlib import Path

import runs  # examples/ is the script's folder

HERE = Path(__file__).resolve().parent
DATA_KEYS = ("dataset", "partition", "shards", "beta", "min_size", "class_floor", "val_fraction")
# Table I of the paper (CIFAR-10, 10 nodes): (shards, ipc) -> (base, distilled); shards -> FedAvg.
PAPER = {(2, 1): (16.54, 28.43), (2, 10): (40.06, 44.57), (5, 1): (21.57, 40.95), (5, 10): (45.60, 53.43),
         (10, 1): (31.36, 37.61)}
PAPER_FEDAVG = {2: 56.62, 5: 66.26, 10: 69.08}
# Per-setting MTT hyper-parameters (REFERENCE §4 and §9; the paper §IV-A for lr_lr).
PAPER_PER_IPC = {1: {"syn_steps": 50, "expert_epochs": 2, "max_start_epoch": 2, "lr_img": 1000.0},
                 10: {"syn_steps": 30, "expert_epochs": 2, "max_start_epoch": 20, "lr_img": 1000.0}}
PAPER_LR_LR = {2: 1e-7, 5: 1e-6, 10: 1e-6}


def cell_settings(mode: str, shards: int, ipc: int, expert_train_epochs: int) -> list[str]:
    """--set flags of one (shards, IPC) cell under --settings paper; T+ is capped by the experts' length."""
    values = dict(PAPER_PER_IPC.get(ipc, {}))
    if shards in PAPER_LR_LR:
        values["lr_lr"] = PAPER_LR_LR[shards]
    if "max_start_epoch" in values:
        values["max_start_epoch"] = min(values["max_start_epoch"], expert_train_epochs - values["expert_epochs"])
    return [x for k, v in values.items() for x in ("--set", f"mtt.{k}={v!r}")] if mode == "distilled" else []


def launch(dsim: Path, name: str, out: Path, args: list[str]) -> dict:
    """One `dsim launch`; returns its summary plus the mean client bytes (sent + received)."""
    run_dir = out / name
    summary = runs.launch(dsim, run_dir, args)
    summary["config"] = tomllib.loads((run_dir / "config.toml").read_text())
    return summary


def pct(result: dict, key: str = "accuracy_mean", std: str = "accuracy_std") -> str:
    return f"{100 * result[key]:.2f} ± {100 * result.get(std, 0.0):.2f}"


def client_val(result: dict, key: str) -> float | None:
    values = [c[key] for c in result["clients"].values() if c.get(key) is not None]
    return 100 * statistics.fmean(values) if values else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(HERE / "mtt-mnist-cpu.toml"))
    parser.add_argument("--fedavg-config", default=str(HERE / "fedavg-mnist-cpu.toml"))
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", default="runs/compare-mtt")
    parser.add_argument("--shards", type=int, nargs="+", help="shard counts (default: the config's)")
    parser.add_argument("--ipc", type=int, nargs="+", help="images per class (default: the config's)")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="extra --set for the MTT runs")
    parser.add_argument("--settings", choices=("paper", "config"),
                        help="per-cell MTT hyper-parameters (default: paper for CIFAR-10 configs, else config)")
    args = parser.parse_args()
    base_cfg = tomllib.loads(Path(args.config).read_text())
    settings = args.settings or ("paper" if base_cfg.get("data", {}).get("dataset") == "cifar10" else "config")
    mtt_cfg = base_cfg.get("mtt", {})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dsim = Path(sys.executable).parent / "dsim"
    common = ["--data-dir", args.data_dir]
    mtt_sets = [x for s in args.sets for x in ("--set", s)]
    rows = []
    for shards in args.shards or [None]:
        shard_set = ["--set", f"data.shards={shards}"] if shards else []
        for ipc in args.ipc or [None]:
            ipc_set = ["--set", f"mtt.ipc={ipc}"] if ipc else []
            tag = f"s{shards or 'cfg'}-ipc{ipc or 'cfg'}"
            cell_shards = shards or base_cfg.get("data", {}).get("shards", 2)
            cell_ipc = ipc or mtt_cfg.get("ipc", 1)
            runs = {}
            for mode in ("base", "distilled"):
                per_cell = cell_settings(mode, cell_shards, cell_ipc, mtt_cfg.get("expert_train_epochs", 50)) \
                    if settings == "paper" else []
                runs[mode] = launch(dsim, f"{mode}-{tag}", out, ["--config", args.config, "--algorithm", "mtt",
                                                                 *common, *per_cell, *mtt_sets, *shard_set,
                                                                 *ipc_set, "--set", f'mtt.mode="{mode}"'])
            rows.append({"tag": tag, **runs})
        cfg = rows[-1]["distilled"]["config"]
        same = [f"{k}={json.dumps(cfg[k])}" for k in ("nodes", "topology", "seed")]
        same += [f"data.{k}={json.dumps(cfg['data'][k])}" for k in DATA_KEYS]
        same += [f"fedavg.{k}={json.dumps(cfg['mtt'][k])}" for k in ("model", "width")]
        fedavg = launch(dsim, f"fedavg-s{shards or 'cfg'}", out, ["--config", args.fedavg_config, "--algorithm",
                                                                 "fedavg", *common, *[x for s in same for x in
                                                                                      ("--set", s)]])
        for row in rows:
            if row["distilled"]["config"]["data"]["shards"] == cfg["data"]["shards"]:
                row["fedavg"] = fedavg
    lines = ["| shards | IPC | base % | distilled % | FedAvg % (rounds) | bytes/node base | bytes/node distilled | "
             "bytes/node FedAvg | client val base → distilled % | wall s (base, distilled, FedAvg) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    table_json = []
    for row in rows:
        base, dist, fed = row["base"], row["distilled"], row["fedavg"]
        shards, ipc = dist["config"]["data"]["shards"], dist["config"]["mtt"]["ipc"]
        fed_res = fed["results"]
        vb, vd = client_val(dist["results"], "base_val"), client_val(dist["results"], "distilled_val")
        val = f"{vb:.2f} → {vd:.2f}" if vb is not None and vd is not None else "-"
        lines.append(
            f"| {shards} | {ipc} | {pct(base['results'])} | {pct(dist['results'])} | "
            f"{100 * fed_res['accuracy']:.2f} ({fed_res['rounds']}) | {base['client_bytes'] / 1e3:.1f} KB | "
            f"{dist['client_bytes'] / 1e3:.1f} KB | {fed['client_bytes'] / 1e6:.2f} MB | {val} | "
            f"{base['wall_time_s']:.0f}, {dist['wall_time_s']:.0f}, {fed['wall_time_s']:.0f} |")
        table_json.append({
            "shards": shards, "ipc": ipc, "dataset": dist["config"]["data"]["dataset"],
            "base": base["results"]["accuracy_mean"], "base_std": base["results"]["accuracy_std"],
            "distilled": dist["results"]["accuracy_mean"], "distilled_std": dist["results"]["accuracy_std"],
            "fedavg": fed_res["accuracy"], "fedavg_rounds": fed_res["rounds"],
            "bytes_per_node": {"base": base["client_bytes"], "distilled": dist["client_bytes"],
                               "fedavg": fed["client_bytes"]},
            "client_val_base": vb, "client_val_distilled": vd,
            "server_choice": {"base": [base["results"]["optimizer"], base["results"]["lr"]],
                              "distilled": [dist["results"]["optimizer"], dist["results"]["lr"]]},
            "paper_cifar10": {"base_distilled": PAPER.get((shards, ipc)), "fedavg": PAPER_FEDAVG.get(shards)},
        })
    table = "\n".join(lines)
    note = ""
    if table_json and table_json[0]["dataset"] == "cifar10":
        note = "\n\nPaper (Table I, CIFAR-10): " + "; ".join(
            f"{s} shards IPC {i}: base {b} / distilled {d}" for (s, i), (b, d) in PAPER.items()
        ) + "; FedAvg " + ", ".join(f"{s} shards {v}" for s, v in PAPER_FEDAVG.items())
    (out / "comparison.md").write_text(f"config: {args.config} (FedAvg: {args.fedavg_config})\n\n{table}{note}\n")
    (out / "comparison.json").write_text(json.dumps(table_json, indent=2) + "\n")
    print(table + note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
