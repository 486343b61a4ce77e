"""The one confidence interval (Student's t, NaN for one value) in EpisodeStats and the report,
and metric states every device can hold."""
from __future__ import annotations

import math
import statistics

import pytest
import torch

from metaft import report
from metaft.core import metrics
from metaft.core.metrics import EpisodeStats, mean_ci95, t975


def test_one_episode_has_no_interval():
    s = EpisodeStats(2)
    s.update(torch.tensor([[70.0, 80.0]]))
    mean, ci, n = s.compute()
    assert mean.tolist() == [70.0, 80.0] and n.item() == 1 and torch.isnan(ci).all()


def test_few_episodes_use_student_t_like_the_report():
    """Lake's 20 runs: the half-width is t(19) s / sqrt(20), computed by hand, and the report's
    function (over seeds) gives the same for the same values."""
    values = [85.0, 90.0, 95.0, 80.0, 100.0, 75.0, 90.0, 95.0, 85.0, 90.0] * 2
    s = EpisodeStats(1)
    s.update(torch.tensor(values[:7]).unsqueeze(1))  # in chunks, as evaluation batches come
    s.update(torch.tensor(values[7:]).unsqueeze(1))
    mean, ci, n = (t.reshape(-1) for t in s.compute())
    hand = 2.093024 * statistics.stdev(values) / math.sqrt(20)
    assert n.item() == 20 and mean.item() == pytest.approx(statistics.mean(values))
    assert ci.item() == pytest.approx(hand, rel=1e-6)
    assert mean_ci95(values)[1] == pytest.approx(hand, rel=1e-6)
    assert report.mean_ci95 is metrics.mean_ci95 and report.t975 is t975  # one function, not two copies
    assert math.isnan(mean_ci95([3.0])[1]) and math.isnan(mean_ci95([])[0])


def test_states_are_float32_and_large_sums_keep_precision():
    """No float64 state (devices without float64 could not hold it); the variance of values far
    from zero is still exact (no sum-of-squares cancellation)."""
    s = EpisodeStats(1)
    values = 10_000.0 + torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0] * 200)
    s.update(values.unsqueeze(1))
    assert all(v.dtype == torch.float32 for v in s.values)
    mean, ci, n = (t.reshape(-1) for t in s.compute())
    assert mean.dtype == torch.float32
    ref = t975(999) * statistics.stdev(values.double().tolist()) / math.sqrt(1000)
    assert ci.item() == pytest.approx(ref, rel=1e-5)
