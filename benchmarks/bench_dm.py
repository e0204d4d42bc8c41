"""DM speed: batched (one forward for all classes) vs the per-class loop, on MNIST-shaped tensors.

Measures (same process, runs interleaved so machine load hits both alike):
- DM iterations/s of `distill_dm` batched vs `distill_dm(per_class_loop=True)` (10 classes, IPC 10, 1x28x28);
- CollabDM client mean-embedding throughput (real images/s) of `client_mean_embeddings` vs a
  per-class loop of forwards, and the largest difference between their outputs.
Writes benchmarks/results/dm.json and prints a table. Random tensors, no dataset needed.

    .venv/bin/python benchmarks/bench_dm.py [--batch-real 256] [--iterations 2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from results_file import write_results  # benchmarks/ is the script's folder

from dsim.ml.dm import (
    CHUNK,
    class_index,
    client_mean_embeddings,
    distill_dm,
    frozen_net,
    init_from_real,
    sample_class_batches,
)
from dsim.ml.dsa import augment, default_strategy, derive_seed

CLASSES, IPC, SIZE = 10, 10, 28
STRATEGY = default_strategy("mnist")


def per_class_client_means(real_x, real_y, seeds, batch, sample_seed=0) -> torch.Tensor:
    """Baseline: the reference client's loop, one forward per (seed, class); same sampling/DSA."""
    index = class_index(real_y)
    out = []
    for net_seed in seeds:
        net = frozen_net("convnet", 1, CLASSES, SIZE, net_seed)
        sampler = torch.Generator().manual_seed(derive_seed(sample_seed, net_seed))
        parts = sample_class_batches(real_x, index, list(index), batch, sampler)
        rows = []
        for cls, part in zip(index, parts, strict=True):
            with torch.no_grad():
                rows.append(net.embed(augment(part, STRATEGY, derive_seed(net_seed, cls))).mean(0))
        out.append(torch.stack(rows))
    return torch.stack(out)


def timed(fn) -> tuple[float, float, object]:
    """(wall seconds, process CPU seconds, result); CPU time is less hurt by a shared machine."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def run_variants(variants, repeats: int, work: float) -> tuple[dict, dict]:
    """Time every variant `repeats` times, interleaved; rate = work / median seconds."""
    samples: dict[str, dict[str, list[float]]] = {n: {"wall": [], "cpu": []} for n in variants}
    outputs = {}
    for _ in range(repeats):
        for name, fn in variants.items():
            wall, cpu, outputs[name] = timed(fn)
            samples[name]["wall"].append(wall)
            samples[name]["cpu"].append(cpu)
    stats = {
        name: {
            "wall_s": s["wall"],
            "cpu_s": s["cpu"],
            "rate_wall": work / statistics.median(s["wall"]),
            "rate_cpu": work / statistics.median(s["cpu"]),
        }
        for name, s in samples.items()
    }
    return stats, outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--batch-real", type=int, default=256, help="real images per class per DM step"
    )
    parser.add_argument("--iterations", type=int, default=2, help="DM iterations per timed run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each variant")
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
    dm_kw = {"iterations": args.iterations, "batch_real": args.batch_real, "dsa_strategy": STRATEGY}
    distill_dm(syn_x, syn_y, real_x, real_y, iterations=1, batch_real=8)  # warm-up
    whole = 10**9  # chunk larger than any batch: literally one forward call per pass

    dm_stats, dm_out = run_variants(
        {
            "batched": lambda: distill_dm(syn_x, syn_y, real_x, real_y, **dm_kw),
            "batched_one_call": lambda: distill_dm(
                syn_x, syn_y, real_x, real_y, chunk=whole, **dm_kw
            ),
            "per_class_loop": lambda: distill_dm(
                syn_x, syn_y, real_x, real_y, per_class_loop=True, **dm_kw
            ),
        },
        args.repeats,
        args.iterations,
    )
    seeds = list(range(1, args.mean_seeds + 1))
    mean_kw = {"batch": args.mean_batch, "dsa_strategy": STRATEGY}
    mean_stats, mean_out = run_variants(
        {
            "batched": lambda: client_mean_embeddings(real_x, real_y, seeds, CLASSES, **mean_kw),
            "batched_one_call": lambda: client_mean_embeddings(
                real_x, real_y, seeds, CLASSES, chunk=whole, **mean_kw
            ),
            "per_class_loop": lambda: per_class_client_means(
                real_x, real_y, seeds, args.mean_batch
            ),
        },
        args.repeats,
        len(seeds) * CLASSES * args.mean_batch,
    )

    def max_diff(outs: dict) -> float:
        return max(float((o - outs["per_class_loop"]).abs().max()) for o in outs.values())

    result = {
        "config": {
            "shape": [1, SIZE, SIZE], "classes": CLASSES, "ipc": IPC,
            "model": "convnet (width 128, depth 3, instancenorm)", "dsa_strategy": STRATEGY,
            "batch_real_per_class": args.batch_real, "dm_iterations_per_run": args.iterations,
            "repeats": args.repeats, "client_mean_batch_per_class": args.mean_batch,
            "client_mean_seeds": len(seeds), "chunk_batched": CHUNK, "torch_threads": args.threads,
            "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "loadavg_at_end": list(os.getloadavg()),
        },
        "dm_iterations_per_s": dm_stats,
        "client_mean_images_per_s": mean_stats,
        "max_abs_diff_vs_per_class_loop": {
            "dm_images": max_diff(dm_out), "client_means": max_diff(mean_out),
        },
        "dm_update_max_abs": float((dm_out["per_class_loop"] - syn_x).abs().max()),
    }  # fmt: skip
    out = write_results("dm", result)

    print(
        f"DM on 1x{SIZE}x{SIZE}, {CLASSES} classes, IPC {IPC}, real batch {args.batch_real}/class, "
        f"{args.threads} thread(s), median of {args.repeats}; rates by wall / by process CPU time"
    )
    print(f"{'measure':<24}{'variant':<18}{'wall':>10}{'cpu':>10}{'x loop':>8}")
    for label, stats in (("DM iterations/s", dm_stats), ("client means images/s", mean_stats)):
        base = stats["per_class_loop"]["rate_cpu"]
        for name, st in stats.items():
            ratio = st["rate_cpu"] / base
            print(
                f"{label:<24}{name:<18}{st['rate_wall']:>10.3f}{st['rate_cpu']:>10.3f}{ratio:>8.2f}"
            )
    diffs = result["max_abs_diff_vs_per_class_loop"]
    print(
        f"max |diff| vs loop: DM images {diffs['dm_images']:.1e} (update size "
        f"{result['dm_update_max_abs']:.1e}), client means {diffs['client_means']:.1e}; wrote {out}"
    )


if __name__ == "__main__":
    main()
