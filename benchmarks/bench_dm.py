"""DM and CollabDM speed and peak memory per device, on MNIST-shaped tensors (1x28x28, 10 classes).

The same work on every device present (the CPU always, each CUDA device torch sees), ConvNet-3
(width 128), DSA without flip, IPC 10:
- dm: DM iterations/s of `distill_dm` (real batch 256 per class, one SGD step per iteration);
- client_means: CollabDM client mean sets/s of `client_mean_embeddings` (one set = all 10
  classes under one seed, 256 real images per class) and the real images/s that makes;
- server_refine: CollabDM server refinement steps/s of `server_refine` (one seed per step);
- evaluation: evaluation epochs/s of `train_model` on the IPC-10 set (what `evaluate_synthetic`
  runs per fresh model: batch 256, DSA, SGD momentum 0.9, weight decay).
With --compare the per-class reference loops (`distill_dm(per_class_loop=True)` and a loop of
forwards for the client means) are timed beside them.

Each (device, measure) runs in a child process (after a warm-up call on a GPU), so its peak memory
is its own:
on a CPU the peak RSS (getrusage) minus the RSS after making the data; on CUDA
torch.cuda.max_memory_allocated after reset_peak_memory_stats (data excluded). Rates divide the work by the median
wall time of the repeats (CPU time beside it on a CPU, less hurt by a shared machine). Results go to
benchmarks/results/dm.json under "devices", keyed by device name ("cpu", "cuda:0 (NVIDIA H200)");
entries of devices not measured in this run are kept. Random tensors, no dataset needed.

    .venv/bin/python benchmarks/bench_dm.py [--devices cpu cuda:0] [--compare] [--repeats N]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import psutil
import torch
from results_file import git_commit, merged, write_results  # benchmarks/ is the script's folder

from dsim.ml.device import available_devices, default_chunk, device_name, synchronize
from dsim.ml.dm import (
    class_index,
    client_mean_embeddings,
    distill_dm,
    frozen_net,
    init_from_real,
    sample_class_batches,
    server_refine,
)
from dsim.ml.dsa import augment, default_strategy, derive_seed
from dsim.ml.models import build_model, embedding_dim
from dsim.ml.train import train_model

CLASSES, IPC, SIZE = 10, 10, 28
BATCH_REAL = 256  # DM real images per class per iteration (REFERENCE §3)
MEAN_BATCH = 256  # client-mean real images per class (the reference uses 512 IID, 100 non-IID)
EVAL_BATCH = 256
STRATEGY = default_strategy("mnist")
MIB = 2**20
MEASURES = ("dm", "client_means", "server_refine", "evaluation")
COMPARE = ("dm_per_class_loop", "client_means_per_class_loop")
WORK = {  # units of work per timed run and repeats: a CPU run stays within about a minute
    "cpu": {"dm": 2, "client_means": 1, "server_refine": 4, "evaluation": 4, "repeats": 1},
    "accelerator": {"dm": 20, "client_means": 20, "server_refine": 100, "evaluation": 100,
                    "repeats": 3},
}  # fmt: skip


def data(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Real images (300 per class) and the IPC-10 set drawn from them, made on the CPU, moved."""
    gen = torch.Generator().manual_seed(0)
    real_x = torch.randn(CLASSES * 300, 1, SIZE, SIZE, generator=gen)
    real_y = torch.arange(CLASSES).repeat_interleave(300)
    syn_x, syn_y = init_from_real(real_x, real_y, IPC, seed=0)
    return real_x.to(device), real_y.to(device), syn_x.to(device), syn_y.to(device)


def per_class_client_means(real_x, real_y, seeds, batch) -> torch.Tensor:
    """Baseline: the reference client's loop, one forward per (seed, class); same sampling/DSA."""
    index = class_index(real_y.cpu())
    out = []
    for net_seed in seeds:
        net = frozen_net("convnet", 1, CLASSES, SIZE, net_seed, device=real_x.device)
        sampler = torch.Generator().manual_seed(derive_seed(0, net_seed))
        parts = sample_class_batches(real_x, index, list(index), batch, sampler)
        rows = []
        for cls, part in zip(index, parts, strict=True):
            with torch.no_grad():
                rows.append(net.embed(augment(part, STRATEGY, derive_seed(net_seed, cls))).mean(0))
        out.append(torch.stack(rows))
    return torch.stack(out)


def measure_fn(name: str, device: torch.device, work: int):
    """(the timed call doing `work` units, units name, extra per-unit facts) of one measure."""
    real_x, real_y, syn_x, syn_y = data(device)
    dm_kw = {"batch_real": BATCH_REAL, "dsa_strategy": STRATEGY, "seed": 0}
    if name in ("dm", "dm_per_class_loop"):
        loop = name == "dm_per_class_loop"
        return lambda n: distill_dm(
            syn_x, syn_y, real_x, real_y, iterations=n, per_class_loop=loop, **dm_kw
        ), {"images_per_unit": CLASSES * (BATCH_REAL + IPC)}
    if name == "client_means":
        return lambda n: client_mean_embeddings(
            real_x, real_y, list(range(1, n + 1)), CLASSES, batch=MEAN_BATCH, dsa_strategy=STRATEGY
        ), {"images_per_unit": CLASSES * MEAN_BATCH}
    if name == "client_means_per_class_loop":
        return lambda n: per_class_client_means(real_x, real_y, list(range(1, n + 1)), MEAN_BATCH), {
            "images_per_unit": CLASSES * MEAN_BATCH
        }
    if name == "server_refine":
        gen = torch.Generator().manual_seed(1)
        dim = embedding_dim("convnet", SIZE)
        targets = [(s, torch.randn(CLASSES, dim, generator=gen)) for s in range(max(work, 1))]
        return lambda n: server_refine(
            syn_x, syn_y, targets[:n], num_classes=CLASSES, dsa_strategy=STRATEGY
        ), {"images_per_unit": CLASSES * IPC}
    if name == "evaluation":

        def train(n: int) -> torch.Tensor:
            net = build_model("convnet", 1, CLASSES, SIZE, seed=0, device=device)
            train_model(net, syn_x, syn_y, epochs=n, batch=EVAL_BATCH, dsa_strategy=STRATEGY)
            return net.classifier.weight

        return train, {"images_per_unit": CLASSES * IPC}
    raise ValueError(f"unknown measure {name}")


def child(args: argparse.Namespace) -> None:
    """Warm up, then time one measure on one device; print one JSON line."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    fn, facts = measure_fn(args.child, device, args.work)
    synchronize(device)
    # the baseline comes before any warm-up: the allocator keeps what a warm-up freed, so a later
    # baseline would hide the working memory (one unit needs as much as any timed run)
    rss_before = psutil.Process().memory_info().rss
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if device.type != "cpu":
        fn(1)  # warm-up: cuDNN/cuBLAS handles, allocator; a CPU has no first-call cost to speak of
        synchronize(device)
    wall, cpu = [], []
    for _ in range(args.repeats):
        w, c = time.perf_counter(), time.process_time()
        fn(args.work)
        synchronize(device)
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    out = {"wall_s": wall, "cpu_s": cpu, **facts}
    if device.type == "cuda":
        out["peak_mib"] = torch.cuda.max_memory_allocated(device) / MIB
        out["peak_kind"] = "torch.cuda.max_memory_allocated"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
        out["peak_mib"] = max(peak - rss_before, 0) / MIB
        out["peak_kind"] = "peak RSS - RSS with the data made"
    print(json.dumps(out))


def run_child(args: argparse.Namespace, device: torch.device, measure: str, work: dict) -> dict:
    cmd = [
        sys.executable, __file__, "--child", measure, "--device", str(device),
        "--work", str(work[measure]), "--repeats", str(work["repeats"]),
        "--threads", str(args.threads),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{measure} on {device} failed:\n{done.stderr[-3000:]}")
    raw = json.loads(done.stdout.strip().splitlines()[-1])
    units = work[measure]
    wall, cpu = statistics.median(raw["wall_s"]), statistics.median(raw["cpu_s"])
    entry = {
        "units_per_run": units, "repeats": len(raw["wall_s"]), "wall_s": raw["wall_s"],
        "cpu_s": raw["cpu_s"], "per_s": units / wall, "best_per_s": units / min(raw["wall_s"]),
        "images_per_s": units * raw["images_per_unit"] / wall, "peak_mib": raw["peak_mib"],
        "peak_kind": raw["peak_kind"],
    }  # fmt: skip
    if device.type == "cpu":
        entry["per_cpu_s"] = units / cpu
    return entry




UNITS = {
    "dm": "DM iterations/s", "dm_per_class_loop": "DM iterations/s (per-class loop)",
    "client_means": "client mean sets/s", "client_means_per_class_loop": "client mean sets/s (loop)",
    "server_refine": "server steps/s", "evaluation": "evaluation epochs/s",
}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", nargs="+", help="default: the CPU and every CUDA device")
    parser.add_argument("--compare", action="store_true", help="time the per-class loops too")
    parser.add_argument("--repeats", type=int, help="timed runs per measure (default per device)")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch CPU threads (1: steadier figures on a shared machine, as recorded)",
    )  # fmt: skip
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--device", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    devices = [torch.device(d) for d in args.devices] if args.devices else available_devices()
    measures = MEASURES + (COMPARE if args.compare else ())
    entries = {}
    for device in devices:
        work = dict(WORK["cpu" if device.type == "cpu" else "accelerator"])
        if args.repeats:
            work["repeats"] = args.repeats
        results = {m: run_child(args, device, m, work) for m in measures}
        entries[device_name(device)] = {
            "measures": results, "chunk": default_chunk(device), "torch_threads": args.threads,
            "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "loadavg_at_end": list(os.getloadavg()), "git_commit": git_commit(),
            "measured_at": datetime.datetime.now().isoformat(timespec="seconds"),
        }  # fmt: skip
    config = {
        "shape": [1, SIZE, SIZE], "classes": CLASSES, "ipc": IPC,
        "model": "convnet (width 128, depth 3, instancenorm)", "dsa_strategy": STRATEGY,
        "dm_batch_real_per_class": BATCH_REAL, "client_mean_batch_per_class": MEAN_BATCH,
        "server_set": f"IPC {IPC} ({CLASSES * IPC} images), one seed per step",
        "evaluation": f"train_model on the IPC {IPC} set, batch {EVAL_BATCH}, DSA, SGD momentum 0.9",
        "rates": "units / median wall seconds of the repeats; best_per_s from the fastest",
    }  # fmt: skip
    out = write_results("dm", merged("dm", entries, config))
    for name, entry in entries.items():
        print(f"{name}: {entry['torch_threads']} thread(s), chunk {entry['chunk']}")
        for measure, r in entry["measures"].items():
            print(
                f"  {UNITS[measure]:<36}{r['per_s']:>10.3f}  ({r['images_per_s']:>8.0f} images/s, "
                f"peak {r['peak_mib']:>7.0f} MiB)"
            )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
