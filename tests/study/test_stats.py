"""metaft.study.stats against hand computations and exact enumerations."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from metaft.study.stats import (
    bootstrap_distribution,
    bootstrap_p,
    cohens_d,
    convergence,
    curves_convergence,
    hierarchical_bootstrap,
    holm,
    holm_bootstrap,
    paired_differences,
    percentile_ci,
)


def test_paired_differences_match_by_fingerprint():
    a = [{"p1": 90.0, "p2": 80.0}, {"p1": 70.0, "p2": 60.0}]
    b = [{"p2": 75.0, "p1": 91.0}, {"p2": 50.0, "p1": 70.0}]  # other order: matched by key, not position
    d = paired_differences(a, b)
    np.testing.assert_array_equal(d[0], [-1.0, 5.0])
    np.testing.assert_array_equal(d[1], [0.0, 10.0])


def test_paired_differences_refuse_unmatched_problems():
    with pytest.raises(ValueError, match="only in a"):
        paired_differences([{"p1": 1.0, "p3": 2.0}], [{"p1": 1.0, "p2": 2.0}])
    with pytest.raises(ValueError, match="same number of seeds"):
        paired_differences([{"p1": 1.0}], [{"p1": 1.0}, {"p1": 2.0}])


def _exact_distribution(diffs):
    """Every equally likely outcome of the hierarchical resample, enumerated: a seed per slot,
    then a problem index per position within that slot."""
    n_seeds = len(diffs)
    values = []
    for seeds in itertools.product(range(n_seeds), repeat=n_seeds):
        per_slot = [[np.mean([diffs[s][i] for i in idx]) for idx in itertools.product(range(len(diffs[s])), repeat=len(diffs[s]))]
                    for s in seeds]
        values += [np.mean(c) for c in itertools.product(*per_slot)]
    return np.array(values)


def test_hierarchical_bootstrap_matches_exact_enumeration():
    diffs = [np.array([0.0, 4.0]), np.array([10.0, 30.0])]  # 2 seeds x 2 problems
    exact = _exact_distribution(diffs)  # 2^2 seed choices x 4 x 4 problem choices = 64 outcomes
    assert exact.size == 64
    # Hand check of the enumeration: a slot's mean is Z = one seed's inner mean, E[Z] = 11,
    # and the statistic is the mean of 2 independent slots.
    z = np.array([0, 2, 2, 4, 10, 20, 20, 30], dtype=float)
    assert exact.mean() == pytest.approx(z.mean()) == pytest.approx(11.0)
    assert exact.var() == pytest.approx(z.var() / 2)
    dist = bootstrap_distribution(diffs, 200_000, np.random.default_rng(0))
    assert dist.mean() == pytest.approx(exact.mean(), abs=0.1)
    assert dist.var() == pytest.approx(exact.var(), rel=0.02)
    # Every atom's probability (the whole distribution, so every percentile).
    atoms, counts = np.unique(exact, return_counts=True)
    freq = np.array([(np.isclose(dist, a)).mean() for a in atoms])
    np.testing.assert_allclose(freq, counts / exact.size, atol=0.004)
    # A flat (non-hierarchical) resample of the 4 pooled differences has another variance: the
    # test can tell the two apart.
    pooled = np.concatenate(diffs)
    assert abs(pooled.var() / pooled.size - exact.var()) > 0.1 * exact.var()


def test_hierarchical_bootstrap_ci_and_p():
    rng = np.random.default_rng(1)
    diffs = [rng.normal(2.0, 1.0, 50) + off for off in (0.0, 0.5, -0.5)]
    res = hierarchical_bootstrap(diffs, 4000, np.random.default_rng(2), level=0.9)
    assert res.mean == pytest.approx(np.mean([d.mean() for d in diffs]))
    assert res.lo < res.mean < res.hi
    dist = bootstrap_distribution(diffs, 4000, np.random.default_rng(2))
    assert (res.lo, res.hi) == pytest.approx(percentile_ci(dist, 0.9))
    assert (dist > 0).all() and res.p == pytest.approx(2 / 4001)  # nothing at or below 0: the +1 floor
    wider = hierarchical_bootstrap(diffs, 4000, np.random.default_rng(2), level=0.99)
    assert wider.lo < res.lo and wider.hi > res.hi


def test_bootstrap_p_by_hand():
    dist = np.array([-1.0, 0.0, 1.0, 2.0, 3.0])  # <= 0: 2, >= 0: 4 -> 2 * (2 + 1) / 6 = 1
    assert bootstrap_p(dist) == 1.0
    dist = np.array([-1.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0])  # <= 0: 1 -> 2 * 2 / 8
    assert bootstrap_p(dist) == pytest.approx(0.5)


def test_holm_hand_worked():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.9, 0.02]), [0.9, 0.04])
    np.testing.assert_allclose(holm([0.5, 0.9]), [1.0, 1.0])  # 0.5 * 2 caps at 1, and 0.9 rises to it
    with pytest.raises(ValueError):
        holm([0.1, 1.5])


def test_holm_bootstrap_decisions_follow_holm():
    rng = np.random.default_rng(3)
    diffs_by_k = {1: [rng.normal(5, 1, 40) for _ in range(3)], 5: [rng.normal(0, 1, 40) for _ in range(3)],
                  10: [rng.normal(1.5, 1, 40) for _ in range(3)]}
    res = holm_bootstrap(diffs_by_k, 2000, np.random.default_rng(4), alpha=0.05)
    np.testing.assert_allclose([res[k].p_holm for k in diffs_by_k], holm([res[k].raw.p for k in diffs_by_k]))
    assert res[1].reject and not res[5].reject
    # The smallest p is tested at 1 - alpha / 3, the largest at 1 - alpha.
    by_p = sorted(res.values(), key=lambda r: r.raw.p)
    np.testing.assert_allclose([r.level for r in by_p], [1 - 0.05 / 3, 1 - 0.05 / 2, 0.95])
    for r in res.values():
        assert r.lo <= r.raw.lo and r.hi >= r.raw.hi  # a Holm level is never below the nominal one


def test_cohens_d_by_hand():
    # mean 3, deviations -2 -1 0 3 -> sum of squares 14, sd = sqrt(14 / 3)
    assert cohens_d([1.0, 2.0, 3.0, 6.0]) == pytest.approx(3 / np.sqrt(14 / 3))
    assert cohens_d([np.array([1.0, 2.0]), np.array([3.0, 6.0])]) == pytest.approx(3 / np.sqrt(14 / 3))


def test_convergence_by_hand():
    steps, acc = [0, 10, 20, 30, 40], [20.0, 60.0, 79.5, 81.0, 80.0]
    c = convergence(steps, acc, final=80.0, tol=1.0)
    assert c.step == 20
    # trapezoids: 400 + 697.5 + 802.5 + 805 = 2705, over a span of 40
    assert c.auc == pytest.approx(2705 / 40)
    dip = [20.0, 80.0, 70.0, 79.5, 80.0]
    assert convergence(steps, dip, final=80.0).step == 10
    assert convergence(steps, dip, final=80.0, sustained=True).step == 30
    assert convergence(steps, [10.0, 20.0, 30.0, 40.0, 50.0], final=90.0).step is None
    assert convergence([5], [42.0], final=42.0) == (5.0, 42.0)


def test_curves_convergence_per_run():
    steps = [0, 10, 20, 30]
    acc = [[20.0, 60.0, 79.5, 80.0], [50.0, 50.0, 50.0, 50.0], [90.0, 10.0, 10.0, 10.0]]
    secs = [[0.0, 1.0, 2.0, 3.0], [0.0, 2.0, 4.0, 6.0], [0.0, 0.5, 1.0, 1.5]]
    out = curves_convergence(steps, acc, secs, tol=1.0)
    np.testing.assert_array_equal(out["steps"], [20.0, 0.0, 0.0])  # run 3 starts above its final
    np.testing.assert_array_equal(out["seconds"], [2.0, 0.0, 0.0])
    # run 1: (400 + 697.5 + 797.5) / 30; run 2: flat 50; run 3: (500 + 100 + 100) / 30
    np.testing.assert_allclose(out["auc"], [1895 / 30, 50.0, 700 / 30])
    dip = [[20.0, 80.0, 70.0, 80.0]]
    assert curves_convergence(steps, dip)["steps"][0] == 10.0
    assert curves_convergence(steps, dip, sustained=True)["steps"][0] == 30.0
