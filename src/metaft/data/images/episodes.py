"""N-way K-shot episodes drawn from an ``ImageStore`` by class index, with a torch.Generator.

The draw is a few tensor operations on indices (classes by the top ``ways`` of i.i.d. uniforms,
images per class likewise among that class's rows); the images are then read from the
memory-mapped store in one sorted fancy-index, so only the episode's rows are paged in.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from metaft.data.images.store import ImageStore

# ITU-R BT.601 luma weights: RGB -> grey for channels=1.
_LUMA = torch.tensor([0.299, 0.587, 0.114])


class ClassTable:
    """A store's rows grouped by class: ``table[c, :counts[c]]`` are class ``c``'s rows."""

    def __init__(self, store: ImageStore) -> None:
        rows = store.rows_by_class()
        self.counts = torch.tensor([len(r) for r in rows], dtype=torch.long)
        self.table = torch.full((len(rows), int(self.counts.max())), -1, dtype=torch.long)
        for c, r in enumerate(rows):
            self.table[c, : len(r)] = torch.from_numpy(r)

    @property
    def num_classes(self) -> int:
        return len(self.counts)

    def draw(self, n: int, ways: int, per_class: int, generator: torch.Generator) -> Tensor:
        """Rows ``[n, ways, per_class]``: per task ``ways`` distinct classes and ``per_class``
        distinct images of each, all uniformly (the top k of i.i.d. uniforms)."""
        keys = torch.rand(n, self.num_classes, generator=generator)
        picks = keys.topk(ways, dim=-1).indices  # [n, ways]
        counts = self.counts[picks]
        u = torch.rand(n, ways, self.table.shape[1], generator=generator)
        u.masked_fill_(torch.arange(self.table.shape[1]) >= counts.unsqueeze(-1), -1.0)  # never a missing row
        slots = u.topk(per_class, dim=-1).indices
        return self.table[picks.unsqueeze(-1), slots]


def read_rows(store: ImageStore, rows: Tensor) -> Tensor:
    """uint8 ``rows.shape + [S, S, C]`` read from the store (sorted, so the reads are sequential)."""
    flat = rows.reshape(-1).numpy()
    order = np.argsort(flat, kind="stable")
    out = np.empty((len(flat), *store.images.shape[1:]), dtype=np.uint8)
    out[order] = store.images[flat[order]]
    return torch.from_numpy(out).view(*rows.shape, *store.images.shape[1:])


def to_float(images: Tensor, channels: int) -> Tensor:
    """uint8 ``[..., S, S, 3]`` -> float ``[..., channels, S, S]`` in [0, 1] (grey when ``channels`` is 1)."""
    # Transposed while still uint8 (a quarter of the bytes a float transpose moves), then converted
    # contiguously: about 5x faster than converting the strided view.
    x = images.movedim(-1, -3).contiguous().float().div_(255)
    if channels == 1:
        x = (x * _LUMA.view(3, 1, 1)).sum(-3, keepdim=True)
    return x


def normalize(x: Tensor, mean: Sequence[float] | None, std: Sequence[float] | None) -> Tensor:
    """``(x - mean) / std`` per channel (in place), or ``x`` as it is when ``mean`` is None."""
    if mean is None:
        return x
    m = torch.tensor(list(mean), dtype=x.dtype).view(-1, 1, 1)
    inv = 1 / torch.tensor(list(std), dtype=x.dtype).view(-1, 1, 1)
    return x.sub_(m).mul_(inv)
