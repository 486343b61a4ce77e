"""Omniglot's classes under one split scheme: the decoded images of every character and, per split,
the table of classes (character, quarter turns). Episodes (``OmniglotDataModule``) and fine-tuning
targets read images through it."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from metaft.data.omniglot.splits import lake_classes, read_split, vinyals_split_files
from metaft.data.omniglot.store import DRAWERS, SETS, default_cache_dir, load_images, zip_paths


class OmniglotClasses:
    """Images uint8 ``[characters, drawers, H, W]`` (``images``, names in ``chars``) and
    ``classes[split]``, a ``[classes, 2]`` table of (character row, quarter turns); arguments as
    for ``OmniglotDataModule``."""

    def __init__(self, data_dir: Path, split: str, rotations: bool | None, lake_val_alphabets: int, image_size: int,
                 cache_dir: str | None, download: bool = False, key: str = "dataset") -> None:
        self.data_dir, self.image_size = Path(data_dir).expanduser(), image_size
        cache = default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()

        # download=true cannot fetch the Vinyals lists: check them before fetching any zip. Without
        # it, a missing data directory is named first (the likelier mistake).
        if download and split == "vinyals":
            vinyals_split_files(self.data_dir, download)
        zips = zip_paths(self.data_dir, download, key)
        split_files = vinyals_split_files(self.data_dir, download) if split == "vinyals" else {}
        chars: list[str] = []
        parts = []
        for name in SETS:
            c, imgs = load_images(zips[name], image_size, cache)
            chars += c
            parts.append(imgs)
        n_background = len(parts[0])
        # All characters, uint8 [characters, drawers, H, W]; sampling indexes into this alone.
        self.images = torch.cat(parts)
        self.chars = chars
        row = {c: i for i, c in enumerate(chars)}
        if split == "vinyals":
            self.classes = {s: read_split(f, row, rotations) for s, f in split_files.items()}
        else:
            self.classes = lake_classes(chars, n_background, lake_val_alphabets, bool(rotations))

    def table(self, split: str) -> Tensor:
        if split not in self.classes:
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        return self.classes[split]

    def class_names(self, split: str) -> list[str]:
        """``ALPHABET/characterNN/rotDDD`` of every class of ``split``, by global class index."""
        return [f"{self.chars[i]}/rot{90 * k:03d}" for i, k in self.table(split).tolist()]

    def gather(self, classes: Tensor, drawers: Tensor) -> Tensor:
        """Float images in [0, 1] of split-table rows ``classes`` (``S + [2]``: character, quarter
        turns) and drawers (``S + [m]``): ``S + [m, 1, H, W]``."""
        char, turn = classes.unbind(-1)
        rows = char.unsqueeze(-1) * DRAWERS + drawers  # S + [m]
        size = self.image_size
        x = self.images.view(-1, size, size).index_select(0, rows.flatten()).view(-1, rows.shape[-1], size, size)
        # All four turns of the whole (small, uint8) batch, then each class picks its own: a fixed
        # four rot90 calls and one block gather instead of a loop over tasks or classes.
        turns = torch.stack([torch.rot90(x, k, dims=(-2, -1)) for k in range(4)])
        x = turns[turn.flatten(), torch.arange(len(x))].view(*rows.shape, size, size)
        return x.unsqueeze(-3).float().div_(255)
