"""DM speed: batched (one forward for all classes) vs the per-class loop, on MNIST-shaped tensors.

Measures (same process, runs interleaved so machine load hits both alike):
- DM iterations/s of `distill_dm` vs `distill_dm_per_class_loop` (10 classes, IPC 10, 1x28x28);
- CollabDM client mean-embedding throughput (real images/s) of `client_mean_embeddings` vs a
  per-class loop of forwards, and the largest difference between their outputs.
Writes benchmarks/results/dm.json and prints a table. Random tensors, no dataset needed.

    .venv/bin/python benchmarks/bench_dm.py [--batch-real 256] [--iterations 2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from dsim.ml.dm import (
    _class_index,
    _sample_batches,
    client_mean_embeddings,
    distill_dm,
    distill_dm_per_class_loop,
    frozen_net,
    init_from_real,
)
from dsim.ml.dsa import augment, default_strategy, derive_seed

CLASSES, IPC, SIZE = 10, 10, 28
STRATEGY = default_strategy("mnist")


def per_class_client_means(real_x, real_y, seeds, batch, sample_seed=0) -> torch.Tensor:
    """Baseline: the reference client's loop, one forward per (seed, class); same sampling/DSA."""
    index = _class_index(real_y)
    out = []
    for net_seed in seeds:
        net = frozen_net("convnet", 1, CLASSES, SIZE, net_seed)
        sampler = torch.Generator().manual_seed(derive_seed(sample_seed, net_seed))
        parts = _sample_batches(real_x, index, list(index), batch, sampler)
        rows = []
        for cls, part in zip(index, parts, strict=True):
            with torch.no_grad():
                rows.append(net.embed(augment(part, STRATEGY, derive_seed(net_seed, cls))).mean(0))
        out.append(torch.stack(rows))
    return torch.stack(out)


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--batch-real", type=int, default=256, help="real images per class per DM step"
    )
    parser.add_argument("--iterations", type=int, default=2, help="DM iterations per timed run")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each variant")
    parser.add_argument(
        "--mean-batch", type=int, default=256, help="client-mean real batch per class"
    )
    parser.add_argument("--mean-seeds", type=int, default=2, help="seeds per client-means run")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    per_class = max(args.batch_real, args.mean_batch) + 44
    gen = torch.Generator().manual_seed(0)
    real_x = torch.randn(CLASSES * per_class, 1, SIZE, SIZE, generator=gen)
    real_y = torch.arange(CLASSES).repeat_interleave(per_class)
    syn_x, syn_y = init_from_real(real_x, real_y, IPC, seed=0)
    dm_kwargs = {
        "iterations": args.iterations,
        "batch_real": args.batch_real,
        "dsa_strategy": STRATEGY,
    }
    distill_dm(syn_x, syn_y, real_x, real_y, iterations=1, batch_real=8)  # warm-up

    dm_times: dict[str, list[float]] = {"batched": [], "per_class_loop": []}
    outputs = {}
    for rep in range(args.repeats):
        for name, fn in (("batched", distill_dm), ("per_class_loop", distill_dm_per_class_loop)):
            dt, outputs[name] = timed(
                lambda fn=fn, rep=rep: fn(syn_x, syn_y, real_x, real_y, seed=rep, **dm_kwargs)
            )
            dm_times[name].append(dt / args.iterations)
    dm_diff = float((outputs["batched"] - outputs["per_class_loop"]).abs().max())

    seeds = list(range(1, args.mean_seeds + 1))
    images = len(seeds) * CLASSES * args.mean_batch
    mean_times: dict[str, list[float]] = {"batched": [], "per_class_loop": []}
    means = {}
    for _ in range(args.repeats):
        dt, means["batched"] = timed(
            lambda: client_mean_embeddings(
                real_x, real_y, seeds, CLASSES, batch=args.mean_batch, dsa_strategy=STRATEGY
            )
        )
        mean_times["batched"].append(dt)
        dt, means["per_class_loop"] = timed(
            lambda: per_class_client_means(real_x, real_y, seeds, args.mean_batch)
        )
        mean_times["per_class_loop"].append(dt)
    mean_diff = float((means["batched"] - means["per_class_loop"]).abs().max())

    result = {
        "config": {
            "shape": [1, SIZE, SIZE], "classes": CLASSES, "ipc": IPC, "model": "convnet (width 128, depth 3, instancenorm)",
            "dsa_strategy": STRATEGY, "batch_real_per_class": args.batch_real,
            "dm_iterations_per_run": args.iterations, "repeats": args.repeats,
            "client_mean_batch_per_class": args.mean_batch, "client_mean_seeds": len(seeds),
            "torch_threads": args.threads, "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "loadavg_at_end": list(os.getloadavg()),
        },
        "dm": {
            name: {
                "seconds_per_iteration": times,
                "iterations_per_s_median": 1.0 / statistics.median(times),
            }
            for name, times in dm_times.items()
        },
        "client_means": {
            name: {"seconds": times, "images_per_s_median": images / statistics.median(times)}
            for name, times in mean_times.items()
        },
        "max_abs_diff": {"dm_images": dm_diff, "client_means": mean_diff},
    }  # fmt: skip
    for section in ("dm", "client_means"):
        key = "iterations_per_s_median" if section == "dm" else "images_per_s_median"
        result[section]["speedup"] = (
            result[section]["batched"][key] / result[section]["per_class_loop"][key]
        )
    out = Path(__file__).resolve().parent / "results" / "dm.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"DM on 1x{SIZE}x{SIZE}, {CLASSES} classes, IPC {IPC}, real batch {args.batch_real}/class, "
          f"{args.threads} thread(s)")  # fmt: skip
    print(f"{'measure':<28}{'batched':>12}{'per-class':>12}{'speedup':>9}")
    for section, key, label in (
        ("dm", "iterations_per_s_median", "DM iterations/s"),
        ("client_means", "images_per_s_median", "client means images/s"),
    ):
        b, p = result[section]["batched"][key], result[section]["per_class_loop"][key]
        print(f"{label:<28}{b:>12.3f}{p:>12.3f}{b / p:>9.2f}")
    print(f"max |diff| DM images {dm_diff:.2e}, client means {mean_diff:.2e}; wrote {out}")


if __name__ == "__main__":
    main()
