"""Base and MTT-distilled sharing against FedAvg on the same data (the paper's Table I): sweeps plus a report.

    python examples/compare_mtt.py --data-dir ../shared/data [--config examples/mtt-mnist-cpu.toml]
        [--fedavg-config examples/fedavg-mnist-cpu.toml] [--shards 2 5 10] [--ipc 1 10] [--set k=v ...]
        [--settings paper|config] [--out runs/compare-mtt] [--print]

It runs `dsim launch --sweep ...` and then `dsim report` on the sweeps; `--print` prints those commands
instead. MTT runs mode "base" and "distilled" for every shard count and IPC. With `--settings config`
(the default but for CIFAR-10) every cell keeps the config's hyper-parameters: one sweep, OUT/mtt. With
`--settings paper` (the default for a CIFAR-10 config) each cell gets those of its setting, as the paper
ran them: per IPC the student steps N, expert epochs M and latest start epoch T+ of the MTT reference
(IPC 1: N=50, T+=2; IPC 10: N=30, T+=20), per shard count the learned-lr step lr_lr the paper states
(2 shards 1e-7, 5 and 10 shards 1e-6); so each cell is its own sweep over the mode, OUT/mtt-s<S>-ipc<I>.
FedAvg is one sweep over the shard counts, OUT/fedavg, with the FedAvg config's training settings
([fedavg], rounds) on the MTT config's nodes, topology, seed, data split and model, so every column sees
the same partition and network. Sweeps resume: run the script again to finish an interrupted one.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

from dsim.config import resolve
from dsim.options import to_dict

HERE = Path(__file__).resolve().parent
DATA_KEYS = ("dataset", "partition", "beta", "min_size", "class_floor", "val_fraction")
# Table I of the paper (CIFAR-10, 10 nodes): (shards, ipc) -> (base, distilled); shards -> FedAvg.
PAPER = {(2, 1): (16.54, 28.43), (2, 10): (40.06, 44.57), (5, 1): (21.57, 40.95), (5, 10): (45.60, 53.43),
         (10, 1): (31.36, 37.61)}
PAPER_FEDAVG = {2: 56.62, 5: 66.26, 10: 69.08}
# Per-setting MTT hyper-parameters (REFERENCE §4 and §9; the paper §IV-A for lr_lr).
PAPER_PER_IPC = {1: {"syn_steps": 50, "expert_epochs": 2, "max_start_epoch": 2, "lr_img": 1000.0},
                 10: {"syn_steps": 30, "expert_epochs": 2, "max_start_epoch": 20, "lr_img": 1000.0}}
PAPER_LR_LR = {2: 1e-7, 5: 1e-6, 10: 1e-6}


def cell_settings(shards: int, ipc: int, expert_train_epochs: int) -> list[str]:
    """--set values of one (shards, IPC) cell under --settings paper; T+ is capped by the experts' length."""
    values = dict(PAPER_PER_IPC.get(ipc, {}))
    if shards in PAPER_LR_LR:
        values["lr_lr"] = PAPER_LR_LR[shards]
    if "max_start_epoch" in values:
        values["max_start_epoch"] = min(values["max_start_epoch"], expert_train_epochs - values["expert_epochs"])
    return [f"mtt.{k}={v!r}" for k, v in values.items()]


def sets(values: list[str]) -> list[str]:
    return [x for s in values for x in ("--set", s)]


def commands(args: argparse.Namespace, dsim: str) -> list[list[str]]:
    """The sweeps to run, then the report over all of them."""
    mtt = resolve(args.config, sets=args.sets)
    shards = args.shards or [mtt.data.shards]
    ipcs = args.ipc or [mtt.mtt.ipc]
    settings = args.settings or ("paper" if mtt.data.dataset == "cifar10" else "config")
    out = Path(args.out)
    common = [dsim, "launch", "--data-dir", args.data_dir, "--quiet"]
    mtt_cmd = [*common, "--config", args.config, "--algorithm", "mtt", *sets(args.sets),
               "--sweep", "mtt.mode=base,distilled"]
    if settings == "config":
        runs = [[*mtt_cmd, "--sweep", f"data.shards={','.join(map(str, shards))}",
                 "--sweep", f"mtt.ipc={','.join(map(str, ipcs))}", "--out", str(out / "mtt")]]
    else:
        runs = [[*mtt_cmd, *sets([f"data.shards={s}", f"mtt.ipc={i}",
                                  *cell_settings(s, i, mtt.mtt.expert_train_epochs)]),
                 "--out", str(out / f"mtt-s{s}-ipc{i}")] for s in shards for i in ipcs]
    cfg = to_dict(mtt)
    same = [f"{k}={json.dumps(cfg[k])}" for k in ("nodes", "topology", "seed")]
    same += [f"data.{k}={json.dumps(cfg['data'][k])}" for k in DATA_KEYS]
    same += [f"fedavg.{k}={json.dumps(cfg['mtt'][k])}" for k in ("model", "width")]
    runs.append([*common, "--config", args.fedavg_config, "--algorithm", "fedavg", *sets(same),
                 "--sweep", f"data.shards={','.join(map(str, shards))}", "--out", str(out / "fedavg")])
    report = [dsim, "report", *[run[run.index("--out") + 1] for run in runs], "--out", str(out / "report.html")]
    return [*runs, report]


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
    parser.add_argument("--print", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args()
    dsim = str(Path(sys.executable).parent / "dsim")
    failed = 0
    for cmd in commands(args, dsim):
        print("$", shlex.join(cmd), flush=True)
        if not args.print:
            code = subprocess.run(cmd).returncode
            if code == 130:
                return 130
            failed += code != 0  # a failed run is in its sweep.csv; the report shows the others
    if resolve(args.config, sets=args.sets).data.dataset == "cifar10":
        print("Paper (Table I, CIFAR-10): " + "; ".join(f"{s} shards IPC {i}: base {b} / distilled {d}"
                                                       for (s, i), (b, d) in PAPER.items())
              + "; FedAvg " + ", ".join(f"{s} shards {v}" for s, v in PAPER_FEDAVG.items()))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
