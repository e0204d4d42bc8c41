"""Partition-and-expand (IDM; CollabDM-pae): each stored image holds l x l mini-images.

Layout: block k = i * l + j is the mini-image in block-row i, block-column j. `expand` returns the
blocks block-major, i.e. [all images' block 0, all images' block 1, ...], with the labels tiled
the same way, so `expand(pack(x), l)` gives back (blurred versions of) x in its original order.
Both directions are plain bilinear resampling, hence differentiable in the pixels, on any device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dsim.errors import DsimError


def _check(images: torch.Tensor, factor: int) -> tuple[int, int]:
    if factor < 1:
        raise DsimError(f"partition-and-expand factor must be >= 1, got {factor}")
    if images.dim() != 4:
        raise ValueError(f"expected [N, C, H, W], got shape {tuple(images.shape)}")
    h, w = images.shape[-2:]
    if h % factor or w % factor:
        raise DsimError(f"image side {h}x{w} is not divisible by the pae factor {factor}")
    return h // factor, w // factor


def expand(
    images: torch.Tensor, labels: torch.Tensor, factor: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split every image into factor^2 mini-images, upsample each to full size (bilinear).

    Returns factor^2 * N images and labels (labels tiled block-major). factor 1 is the identity.
    """
    if factor == 1:
        return images, labels
    bh, bw = _check(images, factor)
    n, c, h, w = images.shape
    blocks = images.reshape(n, c, factor, bh, factor, bw).permute(2, 4, 0, 1, 3, 5)
    blocks = blocks.reshape(factor * factor * n, c, bh, bw)
    return _upsample(blocks, h, w), labels.repeat(factor * factor)


def expand_images(images: torch.Tensor, factor: int) -> torch.Tensor:
    """`expand` without labels: the factor^2 * N full-size mini-images."""
    return expand(images, images.new_zeros(len(images), dtype=torch.long), factor)[0]


def _upsample(blocks: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Bilinear upsampling (align_corners=False): F.interpolate on a CPU; on other devices the same
    map as two small matmuls, because interpolate's CUDA backward accumulates with atomics (not
    reproducible) while matmuls are."""
    if blocks.device.type == "cpu":
        return F.interpolate(blocks, size=(h, w), mode="bilinear", align_corners=False)
    rows = _interpolation_matrix(h, blocks.shape[-2], blocks)  # [h, bh]
    cols = _interpolation_matrix(w, blocks.shape[-1], blocks)  # [w, bw]
    return rows @ blocks @ cols.T


def _interpolation_matrix(out_size: int, in_size: int, like: torch.Tensor) -> torch.Tensor:
    """[out, in] weights of 1-D linear interpolation as F.interpolate computes them."""
    dst = torch.arange(out_size, device=like.device, dtype=like.dtype)
    src = ((dst + 0.5) * (in_size / out_size) - 0.5).clamp(min=0)
    lo = src.floor().long().clamp(max=in_size - 1)
    hi = (lo + 1).clamp(max=in_size - 1)
    frac = src - lo.to(like.dtype)
    weights = torch.zeros(out_size, in_size, device=like.device, dtype=like.dtype)
    rows = torch.arange(out_size, device=like.device)
    weights.index_put_((rows, lo), 1 - frac, accumulate=True)
    weights.index_put_((rows, hi), frac, accumulate=True)
    return weights


def pack(images: torch.Tensor, factor: int) -> torch.Tensor:
    """Inverse layout of `expand`: factor^2 * N full-size images -> N images of tiled thumbnails.

    Image k * N + m becomes block k of stored image m; each is downsampled bilinearly.
    """
    if factor == 1:
        return images
    bh, bw = _check(images, factor)
    total, c, h, w = images.shape
    if total % (factor * factor):
        raise ValueError(f"pack needs a multiple of {factor * factor} images, got {total}")
    n = total // (factor * factor)
    small = F.interpolate(images, size=(bh, bw), mode="bilinear", align_corners=False)
    small = small.reshape(factor, factor, n, c, bh, bw).permute(2, 3, 0, 4, 1, 5)
    return small.reshape(n, c, h, w)
