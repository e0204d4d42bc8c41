"""MTT cost on a CPU: expert training speed, distillation iterations/s and peak memory at IPC 1 / 10.

MNIST-shaped random tensors (1x28x28, 10 classes), the paper's full-width ConvNet-3, DSA without
flip. Short experts (a few epochs on a few thousand images) are trained once and stored as .npy
buffers; each IPC setting then distills in its own child process, so its peak RSS
(getrusage maxrss) is its own. The unrolled graph grows with images x syn_steps, so the table also
gives the cost per image-step and a linear projection to the reference's CIFAR settings
(IPC 1: N=50, IPC 10: N=30). Writes benchmarks/results/mtt.json. No dataset needed.

    .venv/bin/python benchmarks/bench_mtt.py [--ipc 1 10] [--syn-steps 10 5] [--iterations 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch
from results_file import write_results  # benchmarks/ is the script's folder

from dsim.ml.dsa import default_strategy
from dsim.ml.models import build_model, param_count
from dsim.ml.mtt import distill_mtt, load_experts, train_experts

CLASSES, SIZE = 10, 28
STRATEGY = default_strategy("mnist")
REFERENCE_STEPS = {1: 50, 10: 30}  # syn_steps of the reference CIFAR-10 runs (REFERENCE §4)
MIB = 2**20


def random_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(CLASSES).repeat(-(-n // CLASSES))[:n]
    return torch.randn(n, 1, SIZE, SIZE, generator=gen), y


def child(args: argparse.Namespace) -> None:
    """Distill once at one IPC and print one JSON line of timings and memory."""
    torch.set_num_threads(args.threads)
    real_x, real_y = random_data(args.real, seed=0)
    experts = load_experts(Path(args.store))
    rss_before = psutil.Process().memory_info().rss
    marks = [(time.perf_counter(), time.process_time())]
    distill_mtt(
        real_x, real_y, experts, ipc=args.child_ipc, iterations=args.iterations,
        num_classes=CLASSES, syn_steps=args.child_steps, expert_epochs=2, max_start_epoch=2,
        lr_img=1000.0, lr_lr=1e-5, lr_teacher=0.01, dsa_strategy=STRATEGY, seed=0,
        progress=lambda _entry: marks.append((time.perf_counter(), time.process_time())),
    )  # fmt: skip
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    wall = [b[0] - a[0] for a, b in zip(marks, marks[1:], strict=False)]
    cpu = [b[1] - a[1] for a, b in zip(marks, marks[1:], strict=False)]
    print(json.dumps({"wall_s": wall, "cpu_s": cpu, "rss_before": rss_before, "peak_rss": peak}))


def run_child(args: argparse.Namespace, store: str, ipc: int, steps: int) -> dict:
    cmd = [
        sys.executable, __file__, "--child-ipc", str(ipc), "--child-steps", str(steps),
        "--store", store, "--iterations", str(args.iterations), "--real", str(args.real),
        "--threads", str(args.threads),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    raw = json.loads(done.stdout.strip().splitlines()[-1])
    image_steps = CLASSES * ipc * steps
    wall, cpu = statistics.median(raw["wall_s"]), statistics.median(raw["cpu_s"])
    increase = max(raw["peak_rss"] - raw["rss_before"], 0) / MIB
    return {
        "ipc": ipc, "syn_steps": steps, "batch_syn": CLASSES * ipc, "image_steps": image_steps,
        "iterations": args.iterations, "iteration_wall_s": raw["wall_s"],
        "iteration_cpu_s": raw["cpu_s"], "iterations_per_s_wall": 1 / wall,
        "iterations_per_s_cpu": 1 / cpu, "image_steps_per_s_wall": image_steps / wall,
        "image_steps_per_s_cpu": image_steps / cpu, "peak_rss_mib": raw["peak_rss"] / MIB,
        "rss_before_distill_mib": raw["rss_before"] / MIB, "peak_increase_mib": increase,
    }  # fmt: skip


def memory_fit(runs: list[dict]) -> dict | None:
    """Least-squares line peak_increase = fixed + per_image_step * image_steps (>= 2 sizes)."""
    xs = [r["image_steps"] for r in runs]
    ys = [r["peak_increase_mib"] for r in runs]
    if len(set(xs)) < 2:
        return None
    slope, fixed = statistics.linear_regression(xs, ys)
    return {"fixed_mib": fixed, "mib_per_image_step": slope}


def project(run: dict, fit: dict | None) -> dict | None:
    """The run scaled to the reference's syn_steps: time per image-step, memory by the fit."""
    steps = REFERENCE_STEPS.get(run["ipc"])
    if steps is None:
        return None
    image_steps = CLASSES * run["ipc"] * steps
    wall = statistics.median(run["iteration_wall_s"]) * image_steps / run["image_steps"]
    memory = fit["fixed_mib"] + fit["mib_per_image_step"] * image_steps if fit else None
    return {"syn_steps": steps, "iteration_wall_s": wall, "peak_increase_mib": memory}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ipc", type=int, nargs="+", default=[1, 10])
    parser.add_argument(
        "--syn-steps", type=int, nargs="+", default=[10, 5], help="student steps, one per --ipc"
    )
    parser.add_argument("--iterations", type=int, default=2, help="distillation iterations timed")
    parser.add_argument("--real", type=int, default=2000, help="random real images for experts")
    parser.add_argument("--experts", type=int, default=2)
    parser.add_argument("--expert-epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--child-ipc", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-steps", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_ipc:
        child(args)
        return
    if len(args.syn_steps) != len(args.ipc):
        parser.error("give one --syn-steps value per --ipc value")
    torch.set_num_threads(args.threads)
    real_x, real_y = random_data(args.real, seed=0)
    with tempfile.TemporaryDirectory(prefix="bench-mtt-") as store:
        wall, cpu = time.perf_counter(), time.process_time()
        train_experts(
            real_x, real_y, num_experts=args.experts, epochs=args.expert_epochs,
            num_classes=CLASSES, dsa_strategy=STRATEGY, seed=0, store_dir=Path(store),
        )  # fmt: skip
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        buffer_bytes = sum(p.stat().st_size for p in Path(store).iterdir())
        runs = [run_child(args, store, i, s) for i, s in zip(args.ipc, args.syn_steps, strict=True)]
    fit = memory_fit(runs)
    for run in runs:
        run["projected_reference"] = project(run, fit)
    images = args.experts * args.expert_epochs * args.real
    params = param_count(build_model("convnet", 1, CLASSES, SIZE, 0))
    result = {
        "config": {
            "shape": [1, SIZE, SIZE], "classes": CLASSES,
            "model": "convnet (width 128, depth 3, instancenorm)", "params": params,
            "dsa_strategy": STRATEGY, "expert_epochs_matched": 2, "max_start_epoch": 2,
            "lr_img": 1000.0, "lr_lr": 1e-5, "lr_teacher": 0.01, "batch_syn": "all images",
            "torch_threads": args.threads, "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "loadavg_at_end": list(os.getloadavg()),
        },
        "experts": {
            "num": args.experts, "epochs": args.expert_epochs, "real_images": args.real,
            "wall_s": wall, "cpu_s": cpu, "images_per_s_wall": images / wall,
            "buffer_bytes": buffer_bytes,
        },
        "distill": runs,
        "memory_fit": fit,
    }  # fmt: skip
    out = write_results("mtt", result)

    print(
        f"MTT on 1x{SIZE}x{SIZE}, {CLASSES} classes, ConvNet-3 ({params} params), "
        f"{args.threads} thread(s), loadavg {os.getloadavg()[0]:.1f}"
    )
    print(
        f"experts: {args.experts} x {args.expert_epochs} epochs on {args.real} images: "
        f"{wall:.1f}s wall ({images / wall:.0f} images/s), buffer {buffer_bytes / MIB:.1f} MiB"
    )
    print(
        f"{'IPC':>4}{'steps':>6}{'it/s wall':>11}{'it/s cpu':>10}{'img-steps/s':>12}"
        f"{'peak MiB':>10}{'+MiB':>7}{'ref N':>6}{'ref s/it':>9}{'ref +GiB':>9}"
    )
    for r in runs:
        ref = r["projected_reference"] or {}
        memory = ref.get("peak_increase_mib")
        print(
            f"{r['ipc']:>4}{r['syn_steps']:>6}{r['iterations_per_s_wall']:>11.4f}"
            f"{r['iterations_per_s_cpu']:>10.4f}{r['image_steps_per_s_wall']:>12.1f}"
            f"{r['peak_rss_mib']:>10.0f}{r['peak_increase_mib']:>7.0f}"
            f"{ref.get('syn_steps', '-'):>6}{ref.get('iteration_wall_s', 0):>9.0f}"
            f"{memory / 1024 if memory is not None else float('nan'):>9.1f}"
        )
    if fit:
        print(
            f"peak increase ~ {fit['fixed_mib']:.0f} MiB + {fit['mib_per_image_step']:.2f} MiB "
            "per image-step (images x syn_steps); ref = projection to the reference syn_steps"
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
