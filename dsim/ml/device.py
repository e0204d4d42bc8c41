"""Where the learning code runs: per-device defaults, cheap host-to-device copies, reproducible kernels.

Rule of dsim.ml: a function runs on the device of its tensor inputs (`real_x.device`, ...); only a
function with nothing to infer from (a model built from a seed) takes `device=`. Networks are always
initialised on the CPU and then moved, so a seed gives the same network on every device and in
every process (CollabDM sends only seeds). Random draws come from CPU generators for the same
reason; what they produce moves to the device in one copy per call.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

DeviceLike = torch.device | str

CPU_CHUNK = 16
"""Images per forward call on a CPU: ~16 28x28 images keep ConvNet-3 activations near cache; on a
2-core CPU they gave ~1.5x the images/s of 128- to 2,560-image calls."""
ACCELERATOR_CHUNK = 1024
"""Images per forward call on a GPU: large enough to fill one (ConvNet-3 on 1024 images is ~100
GFLOP), small enough that the activations (~0.5 MB per 32x32 image and layer) fit a 16 GB card."""


def default_chunk(device: DeviceLike) -> int:
    """Images per forward call for `device`: CPU_CHUNK on a CPU, ACCELERATOR_CHUNK elsewhere."""
    return CPU_CHUNK if torch.device(device).type == "cpu" else ACCELERATOR_CHUNK


def to_device(
    t: torch.Tensor, device: DeviceLike, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """`t` on `device` (and `dtype`). A CPU tensor bound for CUDA goes through pinned memory with
    non_blocking=True: a plain `.to("cuda")` of pageable memory synchronises the stream, which
    in a hot loop stalls the GPU once per copy."""
    device = torch.device(device)
    if t.device == device or (device.index is None and t.device.type == device.type):
        return t if dtype is None else t.to(dtype)
    if t.device.type == "cpu" and device.type == "cuda":
        return t.pin_memory().to(device, dtype, non_blocking=True)
    return t.to(device, dtype)


def synchronize(device: DeviceLike) -> None:
    """Wait for the queued work of `device` (timing); a no-op on a CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def available_devices() -> list[torch.device]:
    """The CPU, then every CUDA device torch can use."""
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices += [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    return devices


def device_name(device: DeviceLike) -> str:
    """A key for results tables: "cpu" or e.g. "cuda:0 (NVIDIA H200)"."""
    device = torch.device(device)
    if device.type == "cuda":
        index = torch.cuda.current_device() if device.index is None else device.index
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return str(device)


@contextmanager
def deterministic(enabled: bool = True) -> Iterator[None]:
    """Bit-reproducible kernels inside the block (for the same seed, device and torch build).

    CPU runs of dsim.ml are reproducible anyway. On CUDA, cuDNN may pick non-deterministic
    convolution algorithms and index_add/gather backward use atomics unless
    torch.use_deterministic_algorithms is on; set CUBLAS_WORKSPACE_CONFIG=:4096:8 before CUDA
    starts as well. warn_only: an op without a deterministic kernel warns instead of failing.
    dsim.ml avoids those on accelerators (DSA warps and pae expansion use gathers and matmuls there,
    not grid_sample / interpolate, whose CUDA backward passes use atomics). The flags are
    process-global: wrap a whole run (all node threads of a process), not one node's work.
    """
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = saved[3] and not enabled
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]
