"""Per-task fine-tuning on augmented support images (P>M>F, Hu et al. 2022): every full
fine-tuning step sees a freshly augmented copy of the problem's support set (the labels, the
start and the batch-norm statistics of the test queries stay those of the real images).

Each problem draws its augmentations from a generator seeded by its own support images
(``core.inner_loop.content_generator``), so a problem gets the same augmented images whatever
the init, seed, batch or path (vmapped or looped): the comparison between inits stays paired.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from metaft.data.images.augment import augment as crop_flip
from metaft.data.omniglot.images import affine_distort, random_affine

Augment = Callable[[Tensor, torch.Generator], Tensor]  # support images [S, C, H, W] -> the same shape


def _affine(x: Tensor, generator: torch.Generator) -> Tensor:
    """Koch et al. 2015's random affine distortions (Omniglot's ``dataset.augment``), background 0."""
    return affine_distort(x, random_affine(x.shape[0], generator).to(x.device))


def _crop_flip(x: Tensor, generator: torch.Generator) -> Tensor:
    """Natural images: a random crop after padding by an eighth of the side, and horizontal flips."""
    # On the CPU, where the generator draws (the crop's index arithmetic would mix devices).
    return crop_flip(x.cpu(), generator, crop="pad", pad=max(1, x.shape[-1] // 8), flip=True).to(x.device)


AUGMENTATIONS: dict[str, Augment] = {"affine": _affine, "crop_flip": _crop_flip}


def support_augment(name: str | None) -> Augment | None:
    """The augmentation named by ``adapt.finetune.augment`` (None: the real images at every step)."""
    if name is None:
        return None
    if name not in AUGMENTATIONS:
        raise ValueError(f"adapt.finetune.augment must be null or one of {', '.join(AUGMENTATIONS)}, got {name!r}")
    return AUGMENTATIONS[name]
