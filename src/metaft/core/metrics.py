"""The one metric path: per-episode values -> mean and 95% confidence half-width.

One interval everywhere (test episodes in ``EpisodeStats``, seeds in ``metaft.report``):
``t(n-1) * s / sqrt(n)``, Student's t because few values (Lake's 20 runs, 3 seeds) would get far
too narrow an interval from the normal 1.96; NaN for a single value, whose spread is unknown.
"""
from __future__ import annotations

import math
from statistics import mean, stdev
from typing import Any, Sequence, TypeVar

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

# Two-sided 95% quantiles of Student's t (0.975 quantile) for 1..30 degrees of freedom.
_T975 = (12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004,
         2.262157, 2.228139, 2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905,
         2.109816, 2.100922, 2.093024, 2.085963, 2.079614, 2.073873, 2.068658, 2.063899,
         2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272)
_Z975 = 1.959963984540054

S = TypeVar("S", float, Tensor)


def t975(df: int) -> float:
    """0.975 quantile of Student's t with ``df`` degrees of freedom (table up to 30; above, the
    Cornish-Fisher expansion in 1/df, Abramowitz & Stegun 26.7.5, exact to ~1e-6)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4


def ci95(std: S, n: int) -> S:
    """95% half-width of the mean of ``n`` values with sample standard deviation ``std`` (a float
    or a tensor of them): ``t(n-1) * std / sqrt(n)``; NaN when ``n < 2``."""
    if n < 2:
        return std * math.nan
    return std * (t975(n - 1) / math.sqrt(n))


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and 95% CI half-width (``ci95``) of a list of floats; ``(nan, nan)`` for none."""
    if not values:
        return math.nan, math.nan
    if len(values) == 1:
        return float(values[0]), math.nan
    return mean(values), ci95(stdev(values), len(values))


class EpisodeStats(Metric):
    """Mean and 95% CI half-width (``ci95``) of a vector of per-episode values (one entry per
    inner step).

    ``update`` takes ``[episodes, n]``; ``compute`` returns ``(mean[n], ci95[n], count)``, float32
    on the metric's device. The values are kept (float32, as every device has it) and gathered
    across ranks, and the statistics are computed from all of them in float64 on the CPU: the
    same on one device or many, and no cancellation of large sums of squares. After ``compute``,
    ``gathered`` holds those values (float64 ``[episodes, n]``, ranks in order) for paired
    comparisons between runs scored on the same episodes.
    """

    full_state_update = False

    def __init__(self, n: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # torchmetrics' options, e.g. sync_on_compute
        self.n = n
        self.add_state("values", default=[], dist_reduce_fx="cat")

    def update(self, values: Tensor) -> None:
        self.values.append(values.detach().to(torch.float32).reshape(-1, self.n))

    def compute(self) -> tuple[Tensor, Tensor, Tensor]:
        device = self.device
        # After a cross-rank sync the state is one gathered tensor instead of a list.
        empty = isinstance(self.values, list) and not self.values
        v = torch.zeros(0, self.n) if empty else dim_zero_cat(self.values).reshape(-1, self.n)
        v = v.cpu().to(torch.float64)
        self.gathered = v
        count = v.shape[0]
        mean_ = v.mean(0) if count else torch.full((self.n,), math.nan, dtype=torch.float64)
        std = v.std(0, correction=1) if count > 1 else torch.full((self.n,), math.nan, dtype=torch.float64)
        out = (mean_, ci95(std, count), torch.tensor(float(count), dtype=torch.float64))
        return tuple(t.to(device=device, dtype=torch.float32) for t in out)
