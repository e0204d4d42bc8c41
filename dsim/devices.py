"""Which torch device each node of a worker process uses: CPU, or the machine's GPUs round-robin.

CUDA must not be initialised in the launcher: a process forked after CUDA initialisation cannot use
CUDA. `check_device` (in the launcher) only counts devices through NVML, which initialises nothing;
`node_devices` runs in each worker after the fork.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Sequence
from typing import Any

from dsim.errors import DsimError


def _cuda_count() -> int:
    """Visible CUDA devices, counted without initialising CUDA (torch uses NVML for this); a machine
    without the NVIDIA driver answers 0 without importing torch."""
    if not (os.path.exists("/dev/nvidiactl") or os.path.exists("/proc/driver/nvidia")):
        return 0
    import torch

    return torch.cuda.device_count()


def _pool(gpus: str, count: int) -> list[int]:
    pool = [int(g) for g in gpus.split(",")] if gpus else list(range(count))
    bad = [g for g in pool if g >= count]
    if bad:
        raise DsimError(f"gpus lists GPU {bad[0]}, but this machine has {count} visible CUDA device(s)")
    return pool


def check_device(device: str, gpus: str) -> None:
    """Refuse, before anything starts, a device this machine does not have."""
    if device in ("auto", "cpu") and not gpus:
        return
    count = _cuda_count() if device != "cpu" else 0
    if device.startswith("cuda") and count == 0:
        raise DsimError(f"device '{device}' was asked for, but no CUDA device is visible on this machine "
                        f"(use --device auto or cpu)")
    if device.startswith("cuda:") and int(device.split(":")[1]) >= count:
        raise DsimError(f"device '{device}' does not exist: this machine has {count} CUDA device(s)")
    if count:
        _pool(gpus, count)


def node_devices(device: str, gpus: str, local_ranks: Sequence[int], uses_torch: bool) -> list[str]:
    """The device of each node of this worker; called after the fork. Programs without torch use "cpu"."""
    if device == "cpu" or not uses_torch:
        return ["cpu"] * len(local_ranks)
    return assign_devices(device, gpus, local_ranks, _cuda_count())


def assign_devices(device: str, gpus: str, local_ranks: Sequence[int], cuda_count: int) -> list[str]:
    """Per node, by its rank's position on this machine: the GPUs of `gpus` (default: all) dealt
    round-robin, one fixed `cuda:N`, or the CPU where `auto` finds no GPU."""
    if device == "cpu" or (device == "auto" and cuda_count == 0):
        return ["cpu"] * len(local_ranks)
    if cuda_count == 0:
        raise DsimError(f"device '{device}' was asked for, but no CUDA device is visible")
    if device.startswith("cuda:"):
        return [device] * len(local_ranks)
    pool = _pool(gpus, cuda_count)
    return [f"cuda:{pool[i % len(pool)]}" for i in local_ranks]


def prepare_process(devices: Sequence[str], deterministic: bool) -> None:
    """Before a worker first touches CUDA: bit-reproducible kernels when asked (the flags are
    process-wide, so they are set once for all the process's nodes; cuBLAS needs its workspace
    setting before CUDA starts)."""
    if not deterministic or not any(d.startswith("cuda") for d in devices):
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch = sys.modules.get("torch") or __import__("torch")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def peak_memory_mb(device: str) -> float:
    """Peak memory of this process on `device` so far: CUDA's allocator peak, or the CPU's peak RSS."""
    if device.startswith("cuda"):
        torch = sys.modules["torch"]
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def on_device(data: Any, device: str) -> Any:
    """A node's data share (dsim.data.NodeData) with its train and validation tensors on `device`;
    the shared dataset (the server's test set) stays where it is, the program moves what it uses."""
    if device == "cpu":
        return data
    return dataclasses.replace(data, train_x=data.train_x.to(device), train_y=data.train_y.to(device),
                               val_x=data.val_x.to(device), val_y=data.val_y.to(device))
