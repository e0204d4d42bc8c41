"""Differentiable siamese augmentation (DSA, Zhao & Bilen 2021) with explicit, local randomness.

Each call applies ONE op drawn from the strategy ('color_crop_cutout_flip_scale_rotate'). Every op
is differentiable with respect to the pixels (arithmetic, masks, index gathers, affine warps), so
gradients of a matching loss reach the synthetic images. Works on any device: draws are made on the
CPU and copied once per call (see `augment`).

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
from dsim.ml.device import to_device

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
    """Apply one randomly chosen DSA op to a batch x [N, C, H, W] (any device).

    seed given: siamese (one parameter set for the batch, reproducible from the seed).
    seed None: per-image parameters drawn from `generator` (a fresh, unseeded one if None).

    Draws. The op and its parameters are drawn on the generator's device (the CPU for a seed)
    and reach x's device in ONE copy per call, not one per draw. CPU draws, rather than a generator
    on x's device, because CPU and CUDA generators give different streams: a CollabDM client on a
    CPU and a server on a GPU must derive the same augmentation from a seed, and scale/rotate
    matrices are computed on the CPU so every device warps with the very same numbers.
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
    op = ops[int(torch.randint(len(ops), (1,), generator=gen, device=gen.device))]
    draw, apply = _OP_FNS[op]
    return apply(x, draw(gen, n, p, x.shape), p).contiguous()


def _unseeded_generator() -> torch.Generator:
    gen = torch.Generator()
    gen.seed()
    return gen


# Each op is a pair: draw(gen, n, params, x.shape) -> one tensor of raw draws on the generator's
# device (the same generator calls in the same order as always, so CPU results do not change), and
# apply(x, draws, params), which moves the draws to x's device once.


def _uniform(gen: torch.Generator, n: int) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=gen.device)


def _on(x: torch.Tensor, draws: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    return to_device(draws, x.device, dtype)


def _draw_color(gen: torch.Generator, n: int, p: DSAParams, shape: torch.Size) -> torch.Tensor:
    return torch.stack([_uniform(gen, n) for _ in range(3)])  # brightness, saturation, contrast


def _color(x: torch.Tensor, draws: torch.Tensor, p: DSAParams) -> torch.Tensor:
    bright, sat, contrast = _on(x, draws, x.dtype).view(3, -1, 1, 1, 1).unbind(0)
    x = x + (bright - 0.5) * p.brightness
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (sat * p.saturation) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (contrast + p.contrast) + mean


def _crop_shift(shape: torch.Size, p: DSAParams) -> tuple[int, int]:
    return int(shape[2] * p.crop + 0.5), int(shape[3] * p.crop + 0.5)


def _draw_crop(gen: torch.Generator, n: int, p: DSAParams, shape: torch.Size) -> torch.Tensor:
    sh, sw = _crop_shift(shape, p)
    th = torch.randint(-sh, sh + 1, (n,), generator=gen, device=gen.device)
    tw = torch.randint(-sw, sw + 1, (n,), generator=gen, device=gen.device)
    return torch.stack([th, tw])


def _crop(x: torch.Tensor, draws: torch.Tensor, p: DSAParams) -> torch.Tensor:
    """Integer translation with zero fill (pad, then gather the shifted window)."""
    num, _, h, w = x.shape
    sh, sw = _crop_shift(x.shape, p)
    th, tw = (d.expand(num) for d in _on(x, draws).unbind(0))
    padded = F.pad(x, [sw, sw, sh, sh])
    rows = torch.arange(h, device=x.device)[None, :] + (th + sh)[:, None]  # [N, H]
    cols = torch.arange(w, device=x.device)[None, :] + (tw + sw)[:, None]  # [N, W]
    batch = torch.arange(num, device=x.device)[:, None, None]
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]  # [N, H, W, C]
    return out.permute(0, 3, 1, 2)


def _cutout_side(shape: torch.Size, p: DSAParams) -> tuple[int, int]:
    return int(shape[2] * p.cutout + 0.5), int(shape[3] * p.cutout + 0.5)


def _draw_cutout(gen: torch.Generator, n: int, p: DSAParams, shape: torch.Size) -> torch.Tensor:
    (h, w), (ch, cw) = shape[2:], _cutout_side(shape, p)
    oh = torch.randint(0, h + (1 - ch % 2), (n,), generator=gen, device=gen.device) - ch // 2
    ow = torch.randint(0, w + (1 - cw % 2), (n,), generator=gen, device=gen.device) - cw // 2
    return torch.stack([oh, ow])


def _cutout(x: torch.Tensor, draws: torch.Tensor, p: DSAParams) -> torch.Tensor:
    _, _, h, w = x.shape
    ch, cw = _cutout_side(x.shape, p)
    oh, ow = _on(x, draws).unbind(0)
    r = torch.arange(h, device=x.device)[None, :]
    c = torch.arange(w, device=x.device)[None, :]
    in_rows = (r >= oh[:, None]) & (r < oh[:, None] + ch)  # [n, H]
    in_cols = (c >= ow[:, None]) & (c < ow[:, None] + cw)  # [n, W]
    keep = ~(in_rows[:, :, None] & in_cols[:, None, :])
    return x * keep.unsqueeze(1).to(x.dtype)


def _draw_flip(gen: torch.Generator, n: int, p: DSAParams, shape: torch.Size) -> torch.Tensor:
    return _uniform(gen, n)


def _flip(x: torch.Tensor, draws: torch.Tensor, p: DSAParams) -> torch.Tensor:
    if len(draws) == 1:  # siamese: decided on the host, nothing to copy
        return x.flip(3) if bool(draws.to(x.dtype)[0] < p.flip) else x
    flip = _on(x, draws, x.dtype).view(-1, 1, 1, 1) < p.flip
    return torch.where(flip, x.flip(3), x)


def _draw_scale(gen: torch.Generator, n: int, p: DSAParams, shape: torch.Size) -> torch.Tensor:
    lo, hi = 1.0 / p.scale, p.scale
    sx = _uniform(gen, n) * (hi - lo) + lo
    sy = _uniform(gen, n) * (hi - lo) + lo
    zero = torch.zeros(n, device=gen.device)
    return torch.stack([torch.stack([sx, zero, zero], 1), torch.stack([zero, sy, zero], 1)], 1)


def _draw_rotate(gen: torch.Generator, n: int, p: DSAParams, shape: torch.Size) -> torch.Tensor:
    angle = (_uniform(gen, n) - 0.5) * 2 * p.rotate / 180 * math.pi
    cos, sin, zero = torch.cos(angle), torch.sin(angle), torch.zeros(n, device=gen.device)
    return torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)


def _warp(x: torch.Tensor, theta: torch.Tensor, p: DSAParams) -> torch.Tensor:
    """Affine warp, bilinear, zero fill (grid_sample semantics, align_corners=False).

    grid_sample on a CPU; elsewhere the same sampling as four index_select gathers, because
    grid_sample's CUDA backward accumulates with atomics (not reproducible) and index_select's
    backward is deterministic under `device.deterministic()`.
    """
    theta = _on(x, theta, x.dtype)
    if x.device.type == "cpu":
        theta = theta.expand(x.shape[0], 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, align_corners=False)
    return _warp_gather(x, theta)


def _warp_gather(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    num, c, h, w = x.shape
    n, hw = theta.shape[0], h * w
    grid = F.affine_grid(theta, [n, c, h, w], align_corners=False)  # [n, H, W, (x, y)]
    ix = ((grid[..., 0] + 1) * w - 1) / 2  # source pixel coordinates
    iy = ((grid[..., 1] + 1) * h - 1) / 2
    x0, y0 = ix.floor(), iy.floor()
    x1, y1 = x0 + 1, y0 + 1
    if n == 1:  # one warp for the whole batch: gather along the pixel axis
        source = x.reshape(num, c, hw)
        offset = None
    else:  # per image: gather from the flattened batch
        source = x.reshape(-1)
        offset = (torch.arange(num * c, device=x.device) * hw).view(num, c, 1)
    out = None
    for xs, ys, weight in (
        (x0, y0, (x1 - ix) * (y1 - iy)),
        (x1, y0, (ix - x0) * (y1 - iy)),
        (x0, y1, (x1 - ix) * (iy - y0)),
        (x1, y1, (ix - x0) * (iy - y0)),
    ):
        inside = (xs >= 0) & (xs <= w - 1) & (ys >= 0) & (ys <= h - 1)
        idx = (ys.clamp(0, h - 1) * w + xs.clamp(0, w - 1)).long().view(n, 1, hw)
        weight = (weight * inside).view(n, 1, hw)
        if offset is None:
            values = source.index_select(2, idx.view(hw))
        else:
            values = source.index_select(0, (offset + idx).view(-1)).view(num, c, hw)
        term = values * weight
        out = term if out is None else out + term
    return out.view(num, c, h, w)


_OP_FNS = {
    "color": (_draw_color, _color),
    "crop": (_draw_crop, _crop),
    "cutout": (_draw_cutout, _cutout),
    "flip": (_draw_flip, _flip),
    "scale": (_draw_scale, _warp),
    "rotate": (_draw_rotate, _warp),
}
