"""metaft.study.stats against hand computations, scipy, and simulation with a known truth
(the intervals' coverage on crossed data, as the study's design makes them)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sp

from metaft.study.coverage import crossed_interval, simulate
from metaft.study.stats import (
    cohens_d,
    convergence,
    crossed_matrix,
    crossed_t,
    curves_convergence,
    holm,
    holm_family,
    nested_t,
    one_sample_t,
    paired_differences,
    t_quantile,
    t_tail_quantile,
    t_two_sided_p,
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


@pytest.mark.parametrize("df", [1, 2, 2.5, 4, 7.3, 30, 299, 1197, 5e4])
def test_student_t_matches_scipy(df):
    for q in (0.51, 0.6, 0.9, 0.975, 0.995, 1 - 0.05 / 22, 1 - 1e-9, 0.025):
        assert t_quantile(q, df) == pytest.approx(sp.t.ppf(q, df), rel=1e-9)
    for tail in (1e-20, 1e-60):  # far beyond 1 - q in double precision
        assert t_tail_quantile(tail, df) == pytest.approx(sp.t.isf(tail / 2, df), rel=1e-9)
    for t in (0.0, 0.3, 1.96, 4.0, 25.0):
        assert t_two_sided_p(t, df) == pytest.approx(2 * sp.t.sf(t, df), rel=1e-9)


def test_one_sample_and_nested_t_match_scipy():
    x = np.array([1.0, 2.0, 3.0, 4.5])
    r = one_sample_t(x)
    assert (r.lo, r.hi) == pytest.approx(sp.t.interval(0.95, 3, loc=x.mean(), scale=sp.sem(x)))
    assert r.p == pytest.approx(sp.ttest_1samp(x, 0.0).pvalue, rel=1e-9)
    # Nested: a t on the seed means (2 df), whatever the number of episodes per seed.
    rng = np.random.default_rng(0)
    seeds = [rng.normal(m, 3.0, n) for m, n in ((1.0, 40), (2.5, 60), (0.2, 50))]
    means = np.array([s.mean() for s in seeds])
    r = nested_t(seeds, level=0.9)
    assert (r.lo, r.hi) == pytest.approx(sp.t.interval(0.9, 2, loc=means.mean(), scale=sp.sem(means)))
    assert r.p == pytest.approx(sp.ttest_1samp(means, 0.0).pvalue, rel=1e-9) and "nested" in r.method
    assert "not the spread between training runs" in nested_t(seeds[:1]).method


def test_crossed_t_by_hand():
    # 2 seeds x 3 problems. Grand mean 3; seed means 2, 4; problem means 1, 3, 5; the residuals
    # x - seed - problem + grand are 0 except +-0.5 on the first two problems... written out:
    x = np.array([[0.5, 1.5, 4.0], [1.5, 4.5, 6.0]])
    # seed means 2, 4 -> MS_seed = 3 * (1 + 1) / 1 = 6; problem means 1, 3, 5 -> MS_problem = 2 * 8 / 2 = 8;
    # residuals [[0.5, -0.5, 0], [-0.5, 0.5, 0]] -> MS_error = 1 / 2 = 0.5.
    # Parts of Var(mean): seeds (6 - 0.5) / 6 (1 df), problems (8 - 0.5) / 6 (2 df), error 0.5 / 6 (2 df).
    parts = [(5.5 / 6, 1), (7.5 / 6, 2), (0.5 / 6, 2)]
    half = np.sqrt(sum(sp.t.ppf(0.975, d) ** 2 * v for v, d in parts))
    r = crossed_t(x)
    assert r.mean == 3.0 and r.se == pytest.approx(np.sqrt(13.5 / 6))
    assert (r.lo, r.hi) == pytest.approx((3.0 - half, 3.0 + half))
    # The p-value inverts the interval: at level 1 - p the interval just reaches 0.
    assert crossed_t(x, level=1 - r.p).lo == pytest.approx(0.0, abs=1e-9)


def test_crossed_t_reduces_to_the_one_way_t_at_its_limits():
    rng = np.random.default_rng(1)
    # Every problem alike (a column effect of 0, no interaction): the seeds are the only spread,
    # and the interval is the t interval on the seed means (S - 1 df).
    seed_means = np.array([0.4, 1.9, 1.1])
    r = crossed_t(np.repeat(seed_means[:, None], 50, axis=1))
    assert (r.lo, r.hi) == pytest.approx(sp.t.interval(0.95, 2, loc=seed_means.mean(), scale=sp.sem(seed_means)))
    # Every seed alike: the problems are the only spread, a t on the problem means (P - 1 df).
    problems = rng.normal(0.3, 1.0, 40)
    r = crossed_t(np.tile(problems, (3, 1)))
    assert (r.lo, r.hi) == pytest.approx(sp.t.interval(0.95, 39, loc=problems.mean(), scale=sp.sem(problems)))
    # One seed: a t over its problems, labelled as blind to the spread between training runs.
    r = crossed_t(problems[None, :])
    assert (r.lo, r.hi) == pytest.approx(sp.t.interval(0.95, 39, loc=problems.mean(), scale=sp.sem(problems)))
    assert "not the spread between training runs" in r.method


def test_crossed_matrix_needs_every_seed_on_the_same_problems():
    m = crossed_matrix([{"b": 2.0, "a": 1.0}, {"a": 3.0, "b": 4.0}])
    np.testing.assert_array_equal(m, [[1.0, 2.0], [3.0, 4.0]])  # columns by fingerprint, not by order
    with pytest.raises(ValueError, match="seed 1 was scored on other problems than seed 0"):
        crossed_matrix([{"a": 1.0, "b": 2.0}, {"a": 3.0, "c": 4.0}])


def test_crossed_interval_covers_on_crossed_data():
    """Coverage of the study's 95% interval on simulated crossed data (problem effects shared by
    every seed, sd 1; interaction sd 1; truth 0) at the CPU preset's size: its seed count (3,
    conf/study/omniglot_cpu.yaml's stage1.seeds) and 300 problems; 1,500 data sets, fixed seeds.

    Measured here: 96.3% (the t interval on the seed means alone: 83.8%). With a seed effect
    (``python -m metaft.study.coverage``, 2,000 data sets each, docs/results.md): 96.7% when the
    seeds add as much variance to the mean as the problems, 95.3% at 3x, 95.5% at 10x (the t(2)
    regime); 95.9% with 5 seeds x 600 problems. The t
    interval on the seed means alone misses the shared problem effect; its failing the bar shows
    the simulation can tell."""
    from metaft.study.driver import load_config

    cfg = load_config("omniglot_cpu")
    seeds, problems = len(cfg.stage1.seeds), int(cfg.target.problems)
    assert (seeds, problems) == (3, 300)  # the figures above are for this preset

    def seed_means_only(x, level):
        r = one_sample_t(x.mean(1), level)
        return r.lo, r.hi

    cov, _ = simulate("crossed", seeds, problems, 0.0, 1500, np.random.default_rng(2026), crossed_interval)
    naive, _ = simulate("crossed", seeds, problems, 0.0, 1500, np.random.default_rng(2026), seed_means_only)
    assert cov >= 0.93
    assert cov <= 0.99  # valid, not vacuous
    assert naive < 0.90  # a wrong interval fails the bar


def test_holm_family_can_reject_a_large_family():
    # 11 hypotheses (as many as the CPU preset's primary family: probe at 5 K's, full fine-tuning at
    # 1, ...), each 3 seeds x 300 problems crossed, 10 with a clear effect: Holm rejects those 10 and
    # not the null one. The p-values are analytic, so the smallest adjusted one goes below the floor
    # of a 1,000-draw bootstrap (11 / 1001 after Holm's factor of 11).
    rng = np.random.default_rng(3)

    def data(effect):
        return effect + rng.normal(0, 0.05, (3, 1)) + rng.normal(0, 1, (1, 300)) + rng.normal(0, 1, (3, 300))

    family = {k: data(1.0) for k in range(10)} | {"null": data(0.0)}
    res = holm_family(family, crossed_t, alpha=0.05)
    raw = {k: crossed_t(v, 0.95).p for k, v in family.items()}
    np.testing.assert_allclose([res[k].p_holm for k in family], holm(list(raw.values())))
    assert all(res[k].reject for k in range(10)) and not res["null"].reject
    assert min(r.p_holm for r in res.values()) < 1e-20
    # The smallest p is tested at 1 - alpha / 11, the largest at 1 - alpha, each CI at its level.
    by_p = sorted(res.values(), key=lambda r: r.raw.p)
    assert by_p[0].level == pytest.approx(1 - 0.05 / 11) and by_p[-1].level == pytest.approx(0.95)
    for k, r in res.items():
        at = crossed_t(family[k], r.level)
        assert (r.lo, r.hi) == (at.lo, at.hi) and r.lo <= r.raw.lo and r.hi >= r.raw.hi


def test_holm_hand_worked():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.9, 0.02]), [0.9, 0.04])
    np.testing.assert_allclose(holm([0.5, 0.9]), [1.0, 1.0])  # 0.5 * 2 caps at 1, and 0.9 rises to it
    with pytest.raises(ValueError):
        holm([0.1, 1.5])


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
