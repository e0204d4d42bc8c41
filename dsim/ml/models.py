"""ConvNet of the dataset-distillation papers (DC/DSA/DM/MTT/CollabDM), seeded construction, flat parameters.

Distribution matching embeds data with *freshly initialised* networks, and CollabDM sends only the
seed of each network to its clients, so a network built from an integer seed must be identical in
every process: `build_model` draws its initial weights inside a forked RNG context, leaving the
caller's global torch RNG untouched.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import nn

from dsim.errors import DsimError
from dsim.ml.device import to_device

NORMS = ("instancenorm", "batchnorm", "layernorm", "groupnorm", "none")
ACTS = ("relu", "leakyrelu", "sigmoid")
POOLS = ("avgpool", "maxpool", "none")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture knobs of ConvNet; the defaults are ConvNet-3 of the papers (REFERENCE §2)."""

    width: int = 128
    depth: int = 3
    norm: str = "instancenorm"
    act: str = "relu"
    pool: str = "avgpool"

    def __post_init__(self) -> None:
        if self.width < 1 or self.depth < 1:
            raise DsimError(f"model width and depth must be >= 1, got {self.width}, {self.depth}")
        for value, allowed, what in (
            (self.norm, NORMS, "norm"),
            (self.act, ACTS, "act"),
            (self.pool, POOLS, "pool"),
        ):
            if value not in allowed:
                raise DsimError(
                    f"unknown model {what} {value!r}; choose one of {', '.join(allowed)}"
                )


# Named presets; any of them can be refined with a mapping {"name": ..., "width": ...}.
MODEL_PRESETS: dict[str, ModelConfig] = {
    "convnet": ModelConfig(),
    "convnet_bn": ModelConfig(norm="batchnorm"),
    "convnet_nn": ModelConfig(norm="none"),
}

ModelSpec = str | ModelConfig | Mapping[str, Any]


def model_config(spec: ModelSpec) -> ModelConfig:
    """Resolve a preset name, a ModelConfig or a mapping (optional "name" plus field overrides)."""
    if isinstance(spec, ModelConfig):
        return spec
    if isinstance(spec, str):
        key = spec.lower().replace("-", "_")
        if key not in MODEL_PRESETS:
            raise DsimError(f"unknown model {spec!r}; choose one of {', '.join(MODEL_PRESETS)}")
        return MODEL_PRESETS[key]
    if isinstance(spec, Mapping):
        overrides = dict(spec)
        base = model_config(overrides.pop("name", "convnet"))
        known = {f.name for f in fields(ModelConfig)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise DsimError(
                f"unknown model option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return replace(base, **overrides)
    raise DsimError(f"a model is a name or a mapping, got {type(spec).__name__}")


def _norm_layer(norm: str, channels: int, side: int) -> nn.Module | None:
    if norm == "instancenorm":
        return nn.GroupNorm(channels, channels, affine=True)
    if norm == "batchnorm":
        return nn.BatchNorm2d(channels, affine=True)
    if norm == "layernorm":
        return nn.LayerNorm([channels, side, side], elementwise_affine=True)
    if norm == "groupnorm":
        return nn.GroupNorm(4, channels, affine=True)
    return None


def _activation(act: str) -> nn.Module:
    if act == "relu":
        return nn.ReLU(inplace=True)
    if act == "leakyrelu":
        return nn.LeakyReLU(negative_slope=0.01)
    return nn.Sigmoid()


def _plan(image_size: int, depth: int, pool: str) -> tuple[list[int], int]:
    """First-conv paddings per block and the final feature-map side (see ConvNet's docstring)."""
    paddings: list[int] = []
    side = image_size
    while len(paddings) < depth:
        padding = 3 if not paddings and image_size == 28 else 1
        conv_side = side + 2 * padding - 2
        if paddings and conv_side < 4:  # instance norm over < 4x4 values carries ~no signal
            break
        paddings.append(padding)
        side = conv_side // 2 if pool != "none" else conv_side
    return paddings, side


class ConvNet(nn.Module):
    """`depth` blocks of Conv3x3(width) -> norm -> act -> pool 2x2, then one Linear.

    Sizes: a 28x28 input gets padding 3 in the first conv (28 -> 32, as the reference does for
    MNIST), so MNIST and CIFAR both end at width x 4 x 4 = 2048 features. Other inputs keep
    padding 1. Small inputs get fewer blocks: a block is only added while its norm sees a map of
    at least 4x4 (normalising 2x2 maps leaves almost no signal, DM stops learning), so the last map
    is at least 2x2: 16x16 -> 3 blocks, 8x8 digits -> 2 blocks (width x 2 x 2), 4x4 -> 1 block.
    `effective_depth` tells how many blocks were built.
    """

    def __init__(
        self,
        channels: int,
        num_classes: int,
        image_size: int,
        width: int = 128,
        depth: int = 3,
        norm: str = "instancenorm",
        act: str = "relu",
        pool: str = "avgpool",
    ) -> None:
        super().__init__()
        ModelConfig(width, depth, norm, act, pool)  # validates the choices
        if image_size < 2 or channels < 1 or num_classes < 1:
            raise DsimError(
                f"bad model shape: channels={channels} image_size={image_size} classes={num_classes}"
            )
        paddings, side = _plan(image_size, depth, pool)
        layers: list[nn.Module] = []
        in_ch = channels
        conv_side = image_size
        for padding in paddings:
            conv_side = conv_side + 2 * padding - 2
            layers.append(nn.Conv2d(in_ch, width, kernel_size=3, padding=padding))
            norm_layer = _norm_layer(norm, width, conv_side)
            if norm_layer is not None:
                layers.append(norm_layer)
            layers.append(_activation(act))
            if pool != "none":
                layers.append(nn.AvgPool2d(2, 2) if pool == "avgpool" else nn.MaxPool2d(2, 2))
                conv_side //= 2
            in_ch = width
        self.features = nn.Sequential(*layers)
        self.effective_depth = len(paddings)
        self.embed_dim = width * side * side
        self.classifier = nn.Linear(self.embed_dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Flattened features before the Linear layer (the DM embedding)."""
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


_GLOBAL_RNG = threading.Lock()
"""Held while torch's global RNG is seeded and drawn from (every other draw in dsim.ml takes an
explicit generator)."""


def build_model(
    spec: ModelSpec,
    channels: int,
    num_classes: int,
    image_size: int,
    seed: int,
    *,
    device: torch.device | str | None = None,
) -> ConvNet:
    """A ConvNet whose initial weights depend only on (spec, shape, seed): same in every process.

    The weights are always drawn on the CPU (the global torch RNG is forked, so building a model
    never perturbs the caller's random stream) and then moved to `device`: a seed means the same
    network on a CPU and on a GPU, which CollabDM's seeds-only protocol relies on.
    """
    cfg = model_config(spec)
    # The layers draw their initial weights from torch's global RNG; nodes that share a process build
    # models from threads at the same time, so seeding and drawing happen under one lock: otherwise
    # two builds interleave on the one global stream and a seed no longer means one network.
    with _GLOBAL_RNG, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = ConvNet(
            channels, num_classes, image_size, cfg.width, cfg.depth, cfg.norm, cfg.act, cfg.pool
        )
    if device is not None and torch.device(device).type != "cpu":
        net.to(device, non_blocking=True)  # host to device: safe without a sync
    return net


def model_device(model: nn.Module) -> torch.device:
    """Device of a module's first parameter (or buffer); the CPU for a module without any."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def param_count(model: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def flat_params(model: nn.Module) -> torch.Tensor:
    """All parameters as one detached 1-D float tensor (module order, on the model's device)."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


def load_flat_params(model: nn.Module, vector: torch.Tensor) -> None:
    """Copy a vector made by `flat_params` (same architecture) back into `model` in place."""
    total = sum(p.numel() for p in model.parameters())
    if vector.dim() != 1 or vector.numel() != total:
        raise ValueError(f"flat parameter vector has {vector.numel()} values, model needs {total}")
    offset = 0
    vector = to_device(vector, model_device(model))  # one copy, not one per parameter
    with torch.no_grad():
        for p in model.parameters():
            n = p.numel()
            p.copy_(vector[offset : offset + n].view_as(p))
            offset += n


def embedding_dim(spec: ModelSpec, image_size: int) -> int:
    """Length of `ConvNet.embed` output for a square input, without building the network."""
    cfg = model_config(spec)
    _, side = _plan(image_size, cfg.depth, cfg.pool)
    return cfg.width * side * side
