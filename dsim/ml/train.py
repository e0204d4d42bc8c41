"""Plain supervised training of a model on in-memory tensors (evaluation of synthetic sets, experts).

Shuffling and per-image DSA draw from one local CPU generator seeded with `seed`, so a run is
reproducible, never disturbs the global torch RNG and shuffles the same way on every device. The
model trains on the device of the images; nothing is read back from it until the end.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from dsim.errors import DsimError
from dsim.ml.device import to_device
from dsim.ml.dsa import augment

EpochFn = Callable[[int, nn.Module], None]
"""Called after each epoch with (epochs done, model), e.g. to snapshot MTT expert parameters."""


def train_model(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    batch: int = 256,
    dsa_strategy: str | None = None,
    lr_decay_at_half: bool = True,
    seed: int = 0,
    on_epoch: EpochFn | None = None,
    optimizer: str = "sgd",
) -> float:
    """Train `model` in place with cross-entropy; returns the last epoch's mean loss.

    optimizer "sgd" (with `momentum`) or "adam" (the MTT server's search tries both); both use
    `weight_decay`. DSA (per-image parameters, one op per batch) is applied to every batch when a
    strategy is given; with lr_decay_at_half the lr is multiplied by 0.1 from epoch epochs // 2 on
    (REFERENCE §5). The model is moved to x's device in place (as nn.Module.to does), y follows;
    the batch losses are read back once, at the end (a sync per batch would stall a GPU).
    """
    if len(x) != len(y) or len(x) == 0:
        raise DsimError(
            f"training set needs as many labels as images (>0), got {len(x)} and {len(y)}"
        )
    if epochs < 0 or batch < 1:
        raise DsimError(f"need epochs >= 0 and batch >= 1, got {epochs}, {batch}")
    if optimizer not in ("sgd", "adam"):
        raise DsimError(f"unknown optimizer {optimizer!r}; choose sgd or adam")
    gen = torch.Generator().manual_seed(seed)
    device = x.device
    model.to(device)
    opt: torch.optim.Optimizer = (
        torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
        if optimizer == "sgd"
        else torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    )
    y = to_device(y, device).long()
    model.train()
    batch_losses: list[torch.Tensor] = []
    for epoch in range(epochs):
        if lr_decay_at_half and epochs > 1 and epoch == epochs // 2:
            for group in opt.param_groups:
                group["lr"] *= 0.1
        order = to_device(torch.randperm(len(x), generator=gen), device)  # one copy per epoch
        batch_losses = []
        for start in range(0, len(x), batch):
            idx = order[start : start + batch]
            xb = augment(x[idx], dsa_strategy, generator=gen) if dsa_strategy else x[idx]
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            batch_losses.append(loss.detach())
        if on_epoch is not None:
            on_epoch(epoch + 1, model)
    if not batch_losses:
        return float("nan")
    # the mean over images, summed in float64 on the host exactly as a per-batch float() would
    sizes = [min(batch, len(x) - start) for start in range(0, len(x), batch)]
    total = 0.0
    for value, n in zip(torch.stack(batch_losses).tolist(), sizes, strict=True):
        total += value * n
    return total / len(x)
