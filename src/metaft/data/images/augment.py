"""Training-image augmentation as tensor operations on a whole batch, drawn from a torch.Generator
(so a meta-batch's augmentation is determined by (seed, step) like its episodes).

The usual few-shot training augmentation (RFS, MetaOptNet): a random crop of the zero-padded image
(``crop=pad``, ``pad`` pixels each side) or a random resized crop (``crop=resized``: area 8-100%,
aspect 3/4-4/3, as torchvision's default), a horizontal flip with probability 1/2, and colour
jitter (brightness, contrast and saturation factors uniform in [1 - j, 1 + j]). Images are in
[0, 1], before normalisation.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

_LUMA = torch.tensor([0.299, 0.587, 0.114])


def pad_crop(x: Tensor, pad: int, generator: torch.Generator) -> Tensor:
    """A random ``H x W`` window of each zero-padded image ``[M, C, H, W]``."""
    m, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (m,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (m,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None].expand(m, c, h, w + 2 * pad)
    x = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :].expand(m, c, h, w)
    return x.gather(3, cols)


def resized_crop(x: Tensor, generator: torch.Generator, scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Tensor:
    """A random box of each image (area fraction in ``scale``, aspect in ``ratio``, clipped to the
    image) resampled bilinearly to the full size, through one affine grid for the batch."""
    m = x.shape[0]
    area = torch.empty(m).uniform_(*scale, generator=generator)
    log_r = torch.empty(m).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = log_r.exp()
    bw = (area * aspect).sqrt().clamp(max=1.0)  # box size as a fraction of the side
    bh = (area / aspect).sqrt().clamp(max=1.0)
    cx = (torch.rand(m, generator=generator) * 2 - 1) * (1 - bw)  # centre, normalised coordinates
    cy = (torch.rand(m, generator=generator) * 2 - 1) * (1 - bh)
    theta = torch.zeros(m, 2, 3, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = bw, cx, bh, cy
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def colour_jitter(x: Tensor, strength: float, generator: torch.Generator) -> Tensor:
    """Brightness, contrast and saturation, each scaled by a factor uniform in [1 - s, 1 + s]."""
    m, c = x.shape[:2]
    f = 1 + (torch.rand(3, m, 1, 1, 1, generator=generator) * 2 - 1) * strength
    x = x * f[0]
    grey = (x * _LUMA.view(1, 3, 1, 1)).sum(1, keepdim=True) if c == 3 else x
    x = (x - grey.mean((2, 3), keepdim=True)) * f[1] + grey.mean((2, 3), keepdim=True)
    if c == 3:
        grey = (x * _LUMA.view(1, 3, 1, 1)).sum(1, keepdim=True)
        x = (x - grey) * f[2] + grey
    return x.clamp_(0, 1)


def augment(x: Tensor, generator: torch.Generator, crop: str | None = "pad", pad: int = 8, flip: bool = True,
            jitter: float = 0.0) -> Tensor:
    """Augment images ``[..., C, H, W]`` in [0, 1] (any leading dimensions), each independently."""
    shape = x.shape
    x = x.reshape(-1, *shape[-3:])
    if crop == "pad" and pad > 0:
        x = pad_crop(x, pad, generator)
    elif crop == "resized":
        x = resized_crop(x, generator)
    if flip:
        mask = torch.rand(x.shape[0], generator=generator) < 0.5
        x = torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)
    if jitter > 0:
        x = colour_jitter(x, jitter, generator)
    return x.reshape(shape)
