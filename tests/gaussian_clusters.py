"""A tiny synthetic few-shot classification dataset for tests: Gaussian clusters.

Each class is a point in the first ``signal_dims`` input dimensions; every example adds
class-independent noise that is large in the remaining ``noise_dims`` dimensions. Raw inputs are
therefore nearly useless for one-shot nearest-neighbour classification (chance level), while a
body that learns to ignore the noise dimensions separates the classes: training must help.
Train, val and test have disjoint classes drawn from the same distribution.
"""
from __future__ import annotations

import torch
from torch import Tensor

from metaft.data import Episode, EpisodicDataModule

SPLITS = ("train", "val", "test")


class GaussianClusters(EpisodicDataModule):
    """``ways``-way ``shots``-shot episodes of Gaussian clusters, and labelled batches over all
    classes of a split. ``common``: ``EpisodicDataModule``'s arguments."""

    task = "classification"

    def __init__(self, ways: int = 5, shots: int = 1, queries: int = 5, classes: tuple[int, int, int] = (40, 20, 20),
                 signal_dims: int = 4, noise_dims: int = 12, spread: float = 0.3, noise: float = 3.0,
                 **common: int) -> None:
        super().__init__(**common)
        self.ways, self.shots, self.queries = ways, shots, queries
        self.noise_dims, self.spread, self.noise = noise_dims, spread, noise
        g = torch.Generator().manual_seed(12345)  # the class centres are the dataset, fixed
        centres = torch.randn(sum(classes), signal_dims, generator=g)
        self.centres = dict(zip(SPLITS, centres.split(list(classes))))

    @property
    def in_features(self) -> int:
        return self.centres["train"].shape[1] + self.noise_dims

    def num_classes(self, split: str) -> int:
        return len(self.centres[split])

    def examples(self, split: str, y: Tensor, generator: torch.Generator) -> Tensor:
        """One input per label in ``y`` (global class indices of ``split``)."""
        c = self.centres[split][y]
        signal = c + self.spread * torch.randn(c.shape, generator=generator)
        return torch.cat([signal, self.noise * torch.randn(*y.shape, self.noise_dims, generator=generator)], -1)

    def labelled_batch(self, split: str, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        y = torch.randint(self.num_classes(split), (n,), generator=generator)
        return self.examples(split, y, generator), y

    def sample(self, split: str, n: int, generator: torch.Generator) -> Episode:
        picks = torch.rand(n, self.num_classes(split), generator=generator).argsort(-1)[:, : self.ways]
        local = torch.arange(self.ways)
        sy, qy = local.repeat(self.shots).expand(n, -1), local.repeat(self.queries).expand(n, -1)
        sx = self.examples(split, picks.gather(1, sy), generator)
        qx = self.examples(split, picks.gather(1, qy), generator)
        return Episode(sx, sy.contiguous(), qx, qy.contiguous())
