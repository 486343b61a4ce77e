"""The one metric path: per-episode values -> mean and 95% confidence half-width."""
from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics import Metric


class EpisodeStats(Metric):
    """Mean and 95% CI half-width of a vector of per-episode values (one entry per inner step).

    ``update`` takes ``[episodes, n]``; ``compute`` returns ``(mean[n], ci95[n], count)``. The
    states are sums, so the result is the same on one device or reduced across many.
    """

    full_state_update = False

    def __init__(self, n: int) -> None:
        super().__init__()
        self.add_state("total", default=torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total_sq", default=torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, values: Tensor) -> None:
        v = values.detach().to(torch.float64)
        self.total += v.sum(0)
        self.total_sq += (v * v).sum(0)
        self.count += v.shape[0]

    def compute(self) -> tuple[Tensor, Tensor, Tensor]:
        n = self.count
        mean = self.total / n
        # Unbiased sample variance; 1.96 * standard error is the usual few-shot "+-".
        var = (self.total_sq - n * mean * mean).clamp_min(0) / (n - 1).clamp_min(1)
        ci95 = 1.96 * torch.sqrt(var / n)
        return mean, ci95, n


def mean_ci95(values: list[float]) -> tuple[float, float]:
    """Mean and 95% CI half-width of a list of floats (used across seeds in reports)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    m = sum(values) / n
    if n == 1:
        return m, math.nan
    var = sum((v - m) ** 2 for v in values) / (n - 1)
    return m, 1.96 * math.sqrt(var / n)
