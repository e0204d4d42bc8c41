"""Scoring models and synthetic sets (REFERENCE §5): train fresh ConvNets on the set, test them."""

from __future__ import annotations

import statistics
from typing import TypedDict

import torch
from torch import nn

from dsim.errors import DsimError
from dsim.ml import StepFn
from dsim.ml.device import to_device
from dsim.ml.dsa import DEFAULT_STRATEGY, derive_seed
from dsim.ml.models import ModelSpec, build_model, model_device
from dsim.ml.pae import expand
from dsim.ml.train import train_model


class SyntheticScore(TypedDict):
    mean: float
    std: float
    accuracies: list[float]


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 512) -> float:
    """Top-1 accuracy in [0, 1] of `model` (eval mode, no grad); restores the model's mode.

    Runs on the model's device: a test set elsewhere is copied over one batch at a time (so a
    large CPU test set never sits whole on a GPU); the count is read back once, at the end.
    """
    if len(x) == 0:
        raise DsimError("cannot evaluate on an empty test set")
    device = model_device(model)
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    with torch.no_grad():
        for start in range(0, len(x), batch):
            pred = model(to_device(x[start : start + batch], device)).argmax(1)
            labels = to_device(y[start : start + batch], device).long()
            correct += (pred == labels).sum()
    model.train(was_training)
    return int(correct) / len(x)


def evaluate_synthetic(
    syn_x: torch.Tensor,
    syn_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    *,
    num_models: int = 5,
    epochs: int = 300,
    model: ModelSpec = "convnet",
    seed: int = 0,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    batch: int = 256,
    dsa_strategy: str | None = DEFAULT_STRATEGY,
    pae_factor: int | None = None,
    num_classes: int | None = None,
    eval_batch: int = 512,
    on_step: StepFn | None = None,
) -> SyntheticScore:
    """Train `num_models` fresh ConvNets on the synthetic set and score each on the test set.

    Training: SGD (lr, momentum 0.9, weight decay 5e-4), DSA on every batch, lr x0.1 at half;
    the papers use 1000 epochs, scale `epochs` down on a CPU. A pae set is expanded first.
    Returns accuracies in [0, 1], their mean and population std (np.std, as the reference).
    The models are built on the CPU from their seeds and trained on syn_x's device; the test set
    may stay on the CPU (it is streamed over in batches). on_step: (models scored, num_models).
    """
    if num_models < 1:
        raise DsimError(f"num_models must be >= 1, got {num_models}")
    if syn_x.dim() != 4 or syn_x.shape[-1] != syn_x.shape[-2]:
        raise DsimError(f"synthetic images must be [N, C, S, S], got shape {tuple(syn_x.shape)}")
    if syn_x.shape[1:] != test_x.shape[1:]:
        raise DsimError(
            f"synthetic images {tuple(syn_x.shape[1:])} differ from test images {tuple(test_x.shape[1:])}"
        )
    train_x, train_y = syn_x.detach(), syn_y.long()
    if pae_factor and pae_factor > 1:
        train_x, train_y = expand(train_x, train_y, pae_factor)
    if num_classes is None:
        num_classes = max(int(train_y.max()), int(test_y.max())) + 1
    accuracies = []
    if on_step is not None:
        on_step(0, num_models)
    for i in range(num_models):
        net = build_model(
            model, syn_x.shape[1], num_classes, syn_x.shape[-1], derive_seed(seed, i, 1),
            device=syn_x.device,
        )  # fmt: skip
        train_model(
            net, train_x, train_y, epochs=epochs, lr=lr, momentum=momentum,
            weight_decay=weight_decay, batch=batch, dsa_strategy=dsa_strategy,
            seed=derive_seed(seed, i, 2),
        )  # fmt: skip
        accuracies.append(evaluate(net, test_x, test_y, eval_batch))
        if on_step is not None:
            on_step(i + 1, num_models)
    return {
        "mean": statistics.fmean(accuracies),
        "std": statistics.pstdev(accuracies),
        "accuracies": accuracies,
    }
