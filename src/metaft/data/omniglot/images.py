"""Omniglot image operations: ink polarity, exact area resizing, random affine distortions.

Image convention: ink is 1 and background 0 (the PNGs are black ink on white; inverting makes
the zero padding of convolutions match the background, as the MAML and ProtoNet loaders do).

Resize: exact area averaging, each output pixel the mean of the input square it covers (input
pixels weighted by their overlap). Downscaling 105 -> 28 is a factor of 3.75; area averaging keeps
every thin stroke as a grey level and cannot ring (values stay in [0, 1]), and, unlike Pillow's
BOX (whole pixels chosen by their centres) or NEAREST (what Pillow silently uses for one-bit
images, hence for loaders that resize the PNG as opened), it is exactly symmetric, so rotating
a cached image is the same as rotating the 105x105 original and then resizing.
"""
from __future__ import annotations

import functools

import torch
from PIL import Image
from torch import Tensor

SIDE = 105  # the side of every Omniglot PNG


@functools.lru_cache(maxsize=8)
def area_weights(n_in: int, n_out: int) -> Tensor:
    """``[n_out, n_in]``: the overlap of input pixel p with output pixel i, rows summing to 1."""
    edges = torch.arange(n_out + 1, dtype=torch.float64) * (n_in / n_out)
    p = torch.arange(n_in, dtype=torch.float64)
    overlap = (torch.minimum(edges[1:, None], p + 1) - torch.maximum(edges[:-1, None], p)).clamp_min(0)
    return (overlap / overlap.sum(1, keepdim=True)).float()


# Koch et al. 2015's distortions of Omniglot training images: rotation up to 10 degrees, shear up
# to 0.3, scale 0.8-1.2 per axis, translation up to 2 of 105 pixels (as a fraction of the side).
AUGMENT_RANGES = {"rotation_deg": 10.0, "shear": 0.3, "scale": 0.2, "shift": 2 / 105}


def random_affine(n: int, generator: torch.Generator) -> Tensor:
    """``n`` random affine maps ``[n, 2, 3]`` in ``affine_grid``'s normalized coordinates, each
    parameter uniform in ``AUGMENT_RANGES`` (symmetric ranges: the map or its inverse, alike)."""
    r = AUGMENT_RANGES
    u = torch.rand(n, 7, generator=generator) * 2 - 1
    angle = u[:, 0] * (r["rotation_deg"] * torch.pi / 180)
    cos, sin = angle.cos(), angle.sin()
    rotation = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    shear = torch.eye(2).repeat(n, 1, 1)
    shear[:, 0, 1], shear[:, 1, 0] = u[:, 1] * r["shear"], u[:, 2] * r["shear"]
    scale = torch.diag_embed(1 + u[:, 3:5] * r["scale"])
    shift = u[:, 5:7] * (2 * r["shift"])  # normalized coordinates span 2 per side
    return torch.cat([rotation @ shear @ scale, shift.unsqueeze(-1)], -1)


def affine_distort(x: Tensor, theta: Tensor) -> Tensor:
    """Images ``[..., 1, H, W]`` resampled (bilinear) through ``theta`` ``[N, 2, 3]``, one map per
    image (N = their number); outside the image is background (0, as ink is 1)."""
    flat = x.reshape(-1, *x.shape[-3:])
    grid = torch.nn.functional.affine_grid(theta.to(flat.dtype), list(flat.shape), align_corners=False)
    out = torch.nn.functional.grid_sample(flat, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.view(x.shape)


def area_resize(ink: Tensor, image_size: int) -> Tensor:
    """uint8 ``[..., n, n]`` -> uint8 ``[..., image_size, image_size]`` by exact area averaging.
    Callers pass many images at once: one small matmul per image costs more in dispatch (and in
    thread hand-offs on a busy machine) than the arithmetic."""
    w = area_weights(ink.shape[-1], image_size)
    # float32 is exact enough: rounding errors ~1e-4 against levels that never fall within 0.03
    # of a .5 tie for one-bit input at the usual sizes.
    return (w @ ink.float() @ w.T).round_().clamp_(0, 255).to(torch.uint8)


def ink_image(img: Image.Image, ink_is_dark: bool | None = True) -> Tensor:
    """A square 105x105 Omniglot image -> uint8 ``[105, 105]`` with ink 255 and background 0.

    ``ink_is_dark``: the polarity of ``img``; ``None`` decides per image from the majority
    (background) colour, for image sets whose polarity is not known.
    """
    gray = img.convert("L")
    if gray.size != (SIDE, SIDE):
        raise ValueError(f"Omniglot images are {SIDE}x{SIDE}, got {gray.width}x{gray.height}")
    x = torch.frombuffer(bytearray(gray.tobytes()), dtype=torch.uint8).view(SIDE, SIDE)
    if ink_is_dark is None:
        ink_is_dark = bool((x >= 128).sum() * 2 > x.numel())  # mostly light: light is background
    return 255 - x if ink_is_dark else x


def preprocess(img: Image.Image, image_size: int, ink_is_dark: bool | None = True) -> Tensor:
    """One image, as the cache stores it: ``area_resize(ink_image(img))``, uint8 ``[S, S]``."""
    return area_resize(ink_image(img, ink_is_dark), image_size)
