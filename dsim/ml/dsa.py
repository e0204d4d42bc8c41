"""Differentiable siamese augmentation (DSA, Zhao & Bilen 2021) with explicit, local randomness.

Each call applies ONE op drawn from the strategy ('color_crop_cutout_flip_scale_rotate'). Every op
is differentiable with respect to the pixels (arithmetic, masks, index gathers, grid_sample), so
gradients of a matching loss reach the synthetic images.

Siamese mode (`seed` given) follows the reference's batch mode: the op and ONE set of parameters
are drawn from a generator seeded with `seed`, and that set is applied to every image of the batch.
The draws do not depend on the batch size, so a real batch of 256 and a synthetic batch of 10
augmented with the same seed get exactly the same transformation; a client and the server of
CollabDM reproduce each other's augmentation from the seed alone.

Per-sample mode (`seed=None`) draws parameters for each image from `generator`; training on a
synthetic set uses it. The global torch RNG is never used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dsim.errors import DsimError

DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"
OPS = ("color", "crop", "cutout", "flip", "scale", "rotate")
# Datasets whose classes change meaning under a left-right flip (digits, characters).
_NO_FLIP_DATASETS = {"mnist", "emnist", "kmnist", "usps", "svhn", "digits"}

_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class DSAParams:
    """Augmentation magnitudes of the reference implementation (ParamDiffAug)."""

    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5
    crop: float = 0.125  # max shift as a fraction of the side, zero fill
    cutout: float = 0.5  # side of the zeroed square as a fraction of the side
    flip: float = 0.5  # probability
    scale: float = 1.2  # per-axis factor in [1/scale, scale]
    rotate: float = 15.0  # max degrees either way


def parse_strategy(strategy: str | None) -> tuple[str, ...]:
    """Op names of a strategy string; None, '' and 'none' mean no augmentation."""
    if strategy is None or strategy.lower() in ("", "none"):
        return ()
    ops = tuple(strategy.split("_"))
    unknown = [op for op in ops if op not in OPS]
    if unknown:
        raise DsimError(
            f"unknown DSA op(s) {', '.join(unknown)} in {strategy!r}; known: {', '.join(OPS)}"
        )
    return ops


def default_strategy(dataset: str) -> str:
    """The paper strategy, without 'flip' for digit / character datasets (a flipped 2 is no 2)."""
    key = dataset.lower().replace("-", "").replace("_", "")
    if key in _NO_FLIP_DATASETS:
        return "_".join(op for op in OPS if op != "flip")
    return DEFAULT_STRATEGY


def derive_seed(*parts: int) -> int:
    """Mix integers into one well-spread 63-bit seed (SplitMix64), e.g. (network seed, class).

    Unlike `seed + class` (the reference's choice), distinct tuples do not collide trivially.
    """
    h = 0x243F6A8885A308D3
    for part in parts:
        z = ((h ^ (int(part) & _MASK64)) + 0x9E3779B97F4A7C15) & _MASK64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        h = z ^ (z >> 31)
    return h >> 1


def augment(
    x: torch.Tensor,
    strategy: str | None,
    seed: int | None = None,
    *,
    generator: torch.Generator | None = None,
    params: DSAParams | None = None,
) -> torch.Tensor:
    """Apply one randomly chosen DSA op to a batch x [N, C, H, W].

    seed given: siamese (one parameter set for the batch, reproducible from the seed).
    seed None: per-image parameters drawn from `generator` (a fresh, unseeded one if None).
    """
    ops = parse_strategy(strategy)
    if not ops:
        return x
    if x.dim() != 4:
        raise ValueError(f"augment expects [N, C, H, W], got shape {tuple(x.shape)}")
    p = params or DSAParams()
    if seed is not None:
        gen = torch.Generator().manual_seed(int(seed) & _MASK64)
        n = 1
    else:
        gen = generator if generator is not None else _unseeded_generator()
        n = x.shape[0]
    op = ops[int(torch.randint(len(ops), (1,), generator=gen))]
    return _OP_FNS[op](x, gen, n, p).contiguous()


def _unseeded_generator() -> torch.Generator:
    gen = torch.Generator()
    gen.seed()
    return gen


def _rand(gen: torch.Generator, n: int, x: torch.Tensor) -> torch.Tensor:
    """n uniforms in [0, 1) shaped [n, 1, 1, 1] on x's device/dtype (broadcasts when n == 1)."""
    return torch.rand(n, generator=gen).to(device=x.device, dtype=x.dtype).view(n, 1, 1, 1)


def _color(x: torch.Tensor, gen: torch.Generator, n: int, p: DSAParams) -> torch.Tensor:
    x = x + (_rand(gen, n, x) - 0.5) * p.brightness
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_rand(gen, n, x) * p.saturation) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_rand(gen, n, x) + p.contrast) + mean


def _crop(x: torch.Tensor, gen: torch.Generator, n: int, p: DSAParams) -> torch.Tensor:
    """Integer translation with zero fill (pad, then gather the shifted window)."""
    num, _, h, w = x.shape
    sh, sw = int(h * p.crop + 0.5), int(w * p.crop + 0.5)
    th = torch.randint(-sh, sh + 1, (n,), generator=gen).to(x.device).expand(num)
    tw = torch.randint(-sw, sw + 1, (n,), generator=gen).to(x.device).expand(num)
    padded = F.pad(x, [sw, sw, sh, sh])
    rows = torch.arange(h, device=x.device)[None, :] + (th + sh)[:, None]  # [N, H]
    cols = torch.arange(w, device=x.device)[None, :] + (tw + sw)[:, None]  # [N, W]
    batch = torch.arange(num, device=x.device)[:, None, None]
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]  # [N, H, W, C]
    return out.permute(0, 3, 1, 2)


def _cutout(x: torch.Tensor, gen: torch.Generator, n: int, p: DSAParams) -> torch.Tensor:
    _, _, h, w = x.shape
    ch, cw = int(h * p.cutout + 0.5), int(w * p.cutout + 0.5)
    oh = torch.randint(0, h + (1 - ch % 2), (n,), generator=gen).to(x.device) - ch // 2
    ow = torch.randint(0, w + (1 - cw % 2), (n,), generator=gen).to(x.device) - cw // 2
    r = torch.arange(h, device=x.device)[None, :]
    c = torch.arange(w, device=x.device)[None, :]
    in_rows = (r >= oh[:, None]) & (r < oh[:, None] + ch)  # [n, H]
    in_cols = (c >= ow[:, None]) & (c < ow[:, None] + cw)  # [n, W]
    keep = ~(in_rows[:, :, None] & in_cols[:, None, :])
    return x * keep.unsqueeze(1).to(x.dtype)


def _flip(x: torch.Tensor, gen: torch.Generator, n: int, p: DSAParams) -> torch.Tensor:
    flip = _rand(gen, n, x) < p.flip
    if n == 1:
        return x.flip(3) if bool(flip) else x
    return torch.where(flip, x.flip(3), x)


def _warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    theta = theta.to(device=x.device, dtype=x.dtype).expand(x.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False)


def _scale(x: torch.Tensor, gen: torch.Generator, n: int, p: DSAParams) -> torch.Tensor:
    lo, hi = 1.0 / p.scale, p.scale
    sx = torch.rand(n, generator=gen) * (hi - lo) + lo
    sy = torch.rand(n, generator=gen) * (hi - lo) + lo
    zero = torch.zeros(n)
    theta = torch.stack([torch.stack([sx, zero, zero], 1), torch.stack([zero, sy, zero], 1)], 1)
    return _warp(x, theta)


def _rotate(x: torch.Tensor, gen: torch.Generator, n: int, p: DSAParams) -> torch.Tensor:
    angle = (torch.rand(n, generator=gen) - 0.5) * 2 * p.rotate / 180 * math.pi
    cos, sin, zero = torch.cos(angle), torch.sin(angle), torch.zeros(n)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    return _warp(x, theta)


_OP_FNS = {
    "color": _color,
    "crop": _crop,
    "cutout": _cutout,
    "flip": _flip,
    "scale": _scale,
    "rotate": _rotate,
}
