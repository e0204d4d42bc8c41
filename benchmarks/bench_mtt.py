"""MTT cost per device: expert training speed, distillation iterations/s and peak memory at IPC 1 / 10.

MNIST-shaped random tensors (1x28x28, 10 classes), the paper's full-width ConvNet-3, DSA without
flip. On every device present (the CPU always, each CUDA device torch sees): short experts are
trained and stored as .npy buffers, then each IPC setting distills in its own child process, so its
peak memory is its own: on a CPU the peak RSS (getrusage) minus the RSS before distilling, on CUDA
torch.cuda.max_memory_allocated after reset_peak_memory_stats. The unrolled graph grows with
images x syn_steps, so each device also gets a linear memory fit and, where it ran fewer student
steps than the reference CIFAR settings (IPC 1: N=50, IPC 10: N=30), a linear projection to them.
A CPU runs few steps (a run stays near a minute); a GPU runs the reference N. Results go to
benchmarks/results/mtt.json under "devices", keyed by device name ("cpu", "cuda:0 (NVIDIA H200)");
entries of devices not measured in this run are kept. No dataset needed.

    .venv/bin/python benchmarks/bench_mtt.py [--devices cpu cuda:0] [--ipc 1 10] [--syn-steps 5 2]
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
import tempfile
import time
from pathlib import Path

import psutil
import torch
from results_file import git_commit, merged, write_results  # benchmarks/ is the script's folder

from dsim.ml.device import available_devices, device_name, synchronize
from dsim.ml.dsa import default_strategy
from dsim.ml.models import build_model, param_count
from dsim.ml.mtt import distill_mtt, load_experts, train_experts

CLASSES, SIZE = 10, 28
STRATEGY = default_strategy("mnist")
REFERENCE_STEPS = {1: 50, 10: 30}  # syn_steps of the reference CIFAR-10 runs (REFERENCE §4)
MIB = 2**20
SETTINGS = {  # per device kind: a CPU run stays near a minute, a GPU one runs the reference N
    "cpu": {"syn_steps": [5, 2], "iterations": 1, "real": 300, "experts": 1, "expert_epochs": 3},
    "accelerator": {"syn_steps": [50, 30], "iterations": 5, "real": 2000, "experts": 2,
                    "expert_epochs": 3},
}  # fmt: skip
DISTILL = {"expert_epochs": 2, "max_start_epoch": 2, "lr_img": 1000.0, "lr_lr": 1e-5,
           "lr_teacher": 0.01}  # fmt: skip


def random_data(n: int, seed: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(CLASSES).repeat(-(-n // CLASSES))[:n]
    return torch.randn(n, 1, SIZE, SIZE, generator=gen).to(device), y.to(device)


def peak_memory(device: torch.device, rss_before: int) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / MIB, "torch.cuda.max_memory_allocated"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return max(peak - rss_before, 0) / MIB, "peak RSS - RSS before"


def child_experts(args: argparse.Namespace, device: torch.device) -> dict:
    """Train and store the experts on `device`; timings and memory."""
    real_x, real_y = random_data(args.real, 0, device)
    rss_before = psutil.Process().memory_info().rss
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    wall, cpu = time.perf_counter(), time.process_time()
    train_experts(
        real_x, real_y, num_experts=args.experts, epochs=args.expert_epochs, num_classes=CLASSES,
        dsa_strategy=STRATEGY, seed=0, store_dir=Path(args.store),
    )  # fmt: skip
    synchronize(device)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak, kind = peak_memory(device, rss_before)
    images = args.experts * args.expert_epochs * args.real
    return {
        "num": args.experts, "epochs": args.expert_epochs, "real_images": args.real,
        "wall_s": wall, "cpu_s": cpu, "images_per_s": images / wall,
        "epochs_per_s": args.experts * args.expert_epochs / wall, "peak_mib": peak,
        "peak_kind": kind,
        "buffer_bytes": sum(p.stat().st_size for p in Path(args.store).iterdir()),
    }  # fmt: skip


def child_distill(args: argparse.Namespace, device: torch.device) -> dict:
    """Distill once at one IPC (after a one-step warm-up on a GPU); timings and memory."""
    real_x, real_y = random_data(args.real, 0, device)
    experts = load_experts(Path(args.store))
    kw = {"ipc": args.child_ipc, "num_classes": CLASSES, "dsa_strategy": STRATEGY, "seed": 0,
          **DISTILL}  # fmt: skip
    rss_before = psutil.Process().memory_info().rss
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        distill_mtt(real_x, real_y, experts, iterations=1, syn_steps=1, **kw)  # warm-up
        synchronize(device)
    marks = [(time.perf_counter(), time.process_time())]

    def mark(_entry: dict) -> None:  # progress reads the loss back: a sync per iteration, wanted
        synchronize(device)
        marks.append((time.perf_counter(), time.process_time()))

    distill_mtt(
        real_x, real_y, experts, iterations=args.iterations, syn_steps=args.child_steps,
        progress=mark, **kw,
    )  # fmt: skip
    peak, kind = peak_memory(device, rss_before)
    wall = [b[0] - a[0] for a, b in zip(marks, marks[1:], strict=False)]
    cpu = [b[1] - a[1] for a, b in zip(marks, marks[1:], strict=False)]
    image_steps = CLASSES * args.child_ipc * args.child_steps
    w, c = statistics.median(wall), statistics.median(cpu)
    return {
        "ipc": args.child_ipc, "syn_steps": args.child_steps, "batch_syn": CLASSES * args.child_ipc,
        "image_steps": image_steps, "iterations": args.iterations, "iteration_wall_s": wall,
        "iteration_cpu_s": cpu, "iterations_per_s": 1 / w, "iterations_per_cpu_s": 1 / c,
        "image_steps_per_s": image_steps / w, "peak_mib": peak, "peak_kind": kind,
    }  # fmt: skip


def run_child(args: argparse.Namespace, device: torch.device, store: str, **extra) -> dict:
    cmd = [
        sys.executable, __file__, "--child", "--device", str(device), "--store", store,
        "--threads", str(args.threads),
    ]  # fmt: skip
    for key, value in extra.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"MTT child {extra} on {device} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory_fit(runs: list[dict]) -> dict | None:
    """Least-squares line peak = fixed + per_image_step * image_steps (>= 2 sizes)."""
    xs = [r["image_steps"] for r in runs]
    ys = [r["peak_mib"] for r in runs]
    if len(set(xs)) < 2:
        return None
    slope, fixed = statistics.linear_regression(xs, ys)
    return {"fixed_mib": fixed, "mib_per_image_step": slope}


def project(run: dict, fit: dict | None) -> dict | None:
    """The run scaled to the reference's syn_steps: time per image-step, memory by the fit."""
    steps = REFERENCE_STEPS.get(run["ipc"])
    if steps is None or steps == run["syn_steps"]:
        return None
    image_steps = CLASSES * run["ipc"] * steps
    wall = statistics.median(run["iteration_wall_s"]) * image_steps / run["image_steps"]
    memory = fit["fixed_mib"] + fit["mib_per_image_step"] * image_steps if fit else None
    return {"syn_steps": steps, "iteration_wall_s": wall, "peak_mib": memory}


def measure_device(args: argparse.Namespace, device: torch.device) -> dict:
    settings = dict(SETTINGS["cpu" if device.type == "cpu" else "accelerator"])
    for key in ("syn_steps", "iterations", "real", "experts", "expert_epochs"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    if len(settings["syn_steps"]) != len(args.ipc):
        raise SystemExit("give one --syn-steps value per --ipc value")
    common = {"real": settings["real"], "experts": settings["experts"],
              "expert_epochs": settings["expert_epochs"]}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-mtt-") as store:
        experts = run_child(args, device, store, child_kind="experts", **common)
        runs = [
            run_child(
                args, device, store, child_kind="distill", child_ipc=ipc, child_steps=steps,
                iterations=settings["iterations"], **common,
            )  # fmt: skip
            for ipc, steps in zip(args.ipc, settings["syn_steps"], strict=True)
        ]
    fit = memory_fit(runs)
    for run in runs:
        run["projected_reference"] = project(run, fit)
    return {
        "experts": experts, "distill": runs, "memory_fit": fit, "torch_threads": args.threads,
        "torch": torch.__version__, "cpu_count": os.cpu_count(),
        "loadavg_at_end": list(os.getloadavg()), "git_commit": git_commit(),
        "measured_at": datetime.datetime.now().isoformat(timespec="seconds"),
    }  # fmt: skip




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", nargs="+", help="default: the CPU and every CUDA device")
    parser.add_argument("--ipc", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--syn-steps", type=int, nargs="+", help="student steps, one per --ipc")
    parser.add_argument("--iterations", type=int, help="distillation iterations timed")
    parser.add_argument("--real", type=int, help="random real images for the experts")
    parser.add_argument("--experts", type=int)
    parser.add_argument("--expert-epochs", type=int)
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch CPU threads (1: steadier figures on a shared machine, as recorded)",
    )  # fmt: skip
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-kind", help=argparse.SUPPRESS)
    parser.add_argument("--child-ipc", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-steps", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--device", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        device = torch.device(args.device)
        fn = child_experts if args.child_kind == "experts" else child_distill
        print(json.dumps(fn(args, device)))
        return
    devices = [torch.device(d) for d in args.devices] if args.devices else available_devices()
    entries = {device_name(d): measure_device(args, d) for d in devices}
    params = param_count(build_model("convnet", 1, CLASSES, SIZE, 0))
    config = {
        "shape": [1, SIZE, SIZE], "classes": CLASSES,
        "model": "convnet (width 128, depth 3, instancenorm)", "params": params,
        "dsa_strategy": STRATEGY, **DISTILL, "batch_syn": "all images",
        "settings_per_device_kind": SETTINGS,
    }  # fmt: skip
    out = write_results("mtt", merged("mtt", entries, config))

    print(f"MTT on 1x{SIZE}x{SIZE}, {CLASSES} classes, ConvNet-3 ({params} params)")
    for name, entry in entries.items():
        e = entry["experts"]
        print(
            f"{name} ({entry['torch_threads']} thread(s)): experts {e['num']} x {e['epochs']} "
            f"epochs on {e['real_images']} images: {e['images_per_s']:.0f} images/s, "
            f"{e['epochs_per_s']:.3f} epochs/s, peak {e['peak_mib']:.0f} MiB"
        )
        print(f"  {'IPC':>4}{'steps':>6}{'it/s':>10}{'img-steps/s':>12}{'peak MiB':>10}"
              f"{'ref N':>6}{'ref s/it':>9}{'ref GiB':>8}")  # fmt: skip
        for r in entry["distill"]:
            ref = r["projected_reference"] or {}
            memory = ref.get("peak_mib")
            print(
                f"  {r['ipc']:>4}{r['syn_steps']:>6}{r['iterations_per_s']:>10.4f}"
                f"{r['image_steps_per_s']:>12.1f}{r['peak_mib']:>10.0f}"
                f"{ref.get('syn_steps', '-'):>6}{ref.get('iteration_wall_s', 0):>9.0f}"
                f"{memory / 1024 if memory is not None else float('nan'):>8.1f}"
            )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
