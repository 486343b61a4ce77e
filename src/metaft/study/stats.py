"""Statistics of the data-efficiency study (issue #17): paired differences between two inits on
the same target problems, a hierarchical bootstrap over checkpoint seeds and problems, Holm's
correction over the K grid, Cohen's d, and convergence summaries of fine-tuning curves.

Pure functions of numbers (numpy), no Lightning: the driver collects the per-problem accuracies.
"""
from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike


def paired_differences(a: Sequence[Mapping[str, float]], b: Sequence[Mapping[str, float]]) -> list[np.ndarray]:
    """Per checkpoint seed, ``a - b`` on every target problem, matched by problem fingerprint.

    ``a[s]`` / ``b[s]``: the metric of init A / B (checkpoint seed ``s``) on each problem, keyed by
    the problem's fingerprint. Seeds are paired by position: seed ``s`` of A with seed ``s`` of B
    (independent checkpoints, so any fixed pairing is as good; the outer bootstrap resamples the
    pairs). Both must have been run on exactly the same problems, otherwise the comparison would
    not be paired; the differences come in sorted fingerprint order.
    """
    if len(a) != len(b):
        raise ValueError(f"paired_differences: a has {len(a)} checkpoint seeds, b has {len(b)}; give both inits "
                         "the same number of seeds (seed s of a is paired with seed s of b)")
    if not a:
        raise ValueError("paired_differences: no checkpoint seeds given (a and b are empty)")
    out = []
    for s, (ra, rb) in enumerate(zip(a, b)):
        only_a, only_b = set(ra) - set(rb), set(rb) - set(ra)
        if only_a or only_b:
            raise ValueError(
                f"paired_differences: seed {s}: {len(only_a)} problems only in a (e.g. {sorted(only_a)[:3]}) and "
                f"{len(only_b)} only in b (e.g. {sorted(only_b)[:3]}); adapt both inits on the same target problems "
                "(same problem seeds and fingerprints) before comparing")
        if not ra:
            raise ValueError(f"paired_differences: seed {s} has no problems")
        keys = sorted(ra)
        out.append(np.array([ra[k] for k in keys], dtype=np.float64) - np.array([rb[k] for k in keys], dtype=np.float64))
    return out


def _check_diffs(diffs_by_seed: Sequence[ArrayLike]) -> list[np.ndarray]:
    diffs = [np.asarray(d, dtype=np.float64).reshape(-1) for d in diffs_by_seed]
    if not diffs or any(d.size == 0 for d in diffs):
        raise ValueError("diffs_by_seed must hold at least one checkpoint seed, each with at least one problem")
    if not all(np.isfinite(d).all() for d in diffs):
        raise ValueError("diffs_by_seed holds NaN or Inf; drop or fix the failed problems first")
    return diffs


def bootstrap_distribution(diffs_by_seed: Sequence[ArrayLike], n_boot: int, rng: np.random.Generator,
                           chunk: int = 1000) -> np.ndarray:
    """``n_boot`` draws of the hierarchical bootstrap statistic: resample checkpoint seeds with
    replacement (outer), then each chosen seed's problems with replacement (inner, independently
    for every chosen slot, also when a seed is chosen twice); the statistic is the mean over the
    resampled seeds of the mean over their resampled problems. ``chunk``: draws made at a time
    (memory only; the numbers depend on it through the order of random draws)."""
    diffs = _check_diffs(diffs_by_seed)
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    n_seeds = len(diffs)
    out = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        chosen = rng.integers(0, n_seeds, size=(b, n_seeds))  # outer: seeds per draw and slot
        slot_means = np.empty((b, n_seeds))
        for s, d in enumerate(diffs):
            hit = chosen == s
            k = int(hit.sum())
            if k:  # inner: one problem resample per slot that chose seed s
                idx = rng.integers(0, d.size, size=(k, d.size))
                slot_means[hit] = d[idx].mean(1)
        out[start:start + b] = slot_means.mean(1)
    return out


def percentile_ci(dist: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Equal-tailed percentile interval of a bootstrap distribution at confidence ``level``."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    lo, hi = np.quantile(dist, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def bootstrap_p(dist: np.ndarray, null: float = 0.0) -> float:
    """Two-sided bootstrap p-value for H0: statistic = ``null``, by inverting the percentile
    interval: ``2 * min(#{T* <= null} + 1, #{T* >= null} + 1) / (B + 1)``, capped at 1 (the +1
    counts the observed sample as one draw, so p is never 0; Davison & Hinkley 1997). The
    level-(1 - a) percentile interval excludes ``null`` about when p <= a, which keeps Holm's
    decisions and the intervals at Holm's levels consistent."""
    b = dist.size
    below, above = int((dist <= null).sum()), int((dist >= null).sum())
    return float(min(1.0, 2 * (min(below, above) + 1) / (b + 1)))


class BootstrapResult(NamedTuple):
    """Point estimate (plain mean over seeds of the mean over problems), CI bounds, p-value."""

    mean: float
    lo: float
    hi: float
    p: float


def point_estimate(diffs_by_seed: Sequence[ArrayLike]) -> float:
    """Mean over checkpoint seeds of the mean over problems (the statistic on the data itself)."""
    return float(np.mean([d.mean() for d in _check_diffs(diffs_by_seed)]))


def hierarchical_bootstrap(diffs_by_seed: Sequence[ArrayLike], n_boot: int, rng: np.random.Generator,
                           level: float = 0.95) -> BootstrapResult:
    """Mean paired difference with its hierarchical-bootstrap percentile CI at ``level`` and the
    two-sided bootstrap p-value for H0: mean difference = 0 (see ``bootstrap_distribution``,
    ``bootstrap_p``). With one checkpoint seed the outer level is degenerate and the interval
    ignores seed-to-seed variation: give >= 3 seeds."""
    dist = bootstrap_distribution(diffs_by_seed, n_boot, rng)
    return BootstrapResult(point_estimate(diffs_by_seed), *percentile_ci(dist, level), bootstrap_p(dist))


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm–Bonferroni step-down adjusted p-values (same order as given): sorted ascending,
    ``p_(i) * (m - i)`` (0-based ``i``), made non-decreasing by a running maximum, capped at 1.
    Reject hypothesis j at family-wise level a iff its adjusted p <= a."""
    p = np.asarray(pvalues, dtype=np.float64).reshape(-1)
    if p.size == 0 or not ((p >= 0) & (p <= 1)).all():
        raise ValueError(f"holm needs one or more p-values in [0, 1], got {list(p)}")
    m = p.size
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    out = np.empty(m)
    out[order] = adjusted
    return out


class HolmResult(NamedTuple):
    """One hypothesis (one K) of a Holm family: the bootstrap result at the nominal level, the
    Holm-adjusted p-value, the decision at family-wise ``alpha``, and the percentile CI at the
    level Holm tests this hypothesis at (``1 - alpha / (m - rank)``, rank by raw p)."""

    raw: BootstrapResult
    p_holm: float
    reject: bool
    level: float
    lo: float
    hi: float


def holm_bootstrap(diffs_by_k: Mapping[Hashable, Sequence[ArrayLike]], n_boot: int, rng: np.random.Generator,
                   alpha: float = 0.05) -> dict[Hashable, HolmResult]:
    """Hierarchical bootstrap per K (``diffs_by_k[K]``: the per-seed paired differences), Holm's
    correction over the K's, and each K's interval at its Holm level. The step-down intervals
    match the decisions (an interval excluding 0 at a hypothesis after the first non-rejection
    does not reject it: Holm stops there); they are not simultaneous-coverage intervals, for
    which Bonferroni's ``1 - alpha / m`` is the simple choice."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    keys = list(diffs_by_k)
    if not keys:
        raise ValueError("holm_bootstrap: diffs_by_k is empty; give the paired differences of at least one K")
    dists = [bootstrap_distribution(diffs_by_k[k], n_boot, rng) for k in keys]
    raw = [BootstrapResult(point_estimate(diffs_by_k[k]), *percentile_ci(d, 1 - alpha), bootstrap_p(d))
           for k, d in zip(keys, dists)]
    p_adj = holm([r.p for r in raw])
    rank = np.empty(len(keys), dtype=int)
    rank[np.argsort([r.p for r in raw], kind="stable")] = np.arange(len(keys))
    out = {}
    for i, k in enumerate(keys):
        level = 1 - alpha / (len(keys) - rank[i])
        out[k] = HolmResult(raw[i], float(p_adj[i]), bool(p_adj[i] <= alpha), level, *percentile_ci(dists[i], level))
    return out


def cohens_d(diffs: ArrayLike | Sequence[ArrayLike]) -> float:
    """Cohen's d for paired data, the ``d_z`` variant: mean of the differences over their sample
    standard deviation (n - 1 denominator). A list of per-seed arrays is pooled (every
    (seed, problem) difference is one pair). NaN when the differences have no spread."""
    if isinstance(diffs, (list, tuple)) and diffs and np.ndim(diffs[0]) > 0:
        d = np.concatenate([np.asarray(x, dtype=np.float64).reshape(-1) for x in diffs])
    else:
        d = np.asarray(diffs, dtype=np.float64).reshape(-1)
    if d.size < 2:
        raise ValueError(f"cohens_d needs at least 2 paired differences, got {d.size}")
    sd = d.std(ddof=1)
    return float(d.mean() / sd) if sd > 0 else float("nan")


class Convergence(NamedTuple):
    """``step``: the first step (or second, if the x values are times) at which the curve came
    within ``tol`` of the final accuracy (None if never); ``auc``: mean accuracy over the span."""

    step: float | None
    auc: float


def convergence(curve_steps: ArrayLike, curve_acc: ArrayLike, final: float, tol: float = 1.0,
                sustained: bool = False) -> Convergence:
    """Convergence of one fine-tuning run's accuracy curve (percent) against its ``final``.

    ``step``: the first x value with ``acc >= final - tol`` (reaching or overshooting the final
    accuracy counts; ``sustained``: the first from which the curve never drops below it again).
    Pass cumulative seconds as ``curve_steps`` for time to converge. ``auc``: the area under the
    curve by the trapezoid rule divided by the x span (the curve's mean level, in percent; a
    single point gives its value).
    """
    x = np.asarray(curve_steps, dtype=np.float64).reshape(-1)
    y = np.asarray(curve_acc, dtype=np.float64).reshape(-1)
    if x.size != y.size or x.size == 0:
        raise ValueError(f"curve_steps and curve_acc must be non-empty and of equal length, got {x.size} and {y.size}")
    if (np.diff(x) <= 0).any():
        raise ValueError("curve_steps must be strictly increasing")
    if tol < 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    near = y >= final - tol
    if sustained:  # near from here to the end: a reversed running "all"
        near = np.logical_and.accumulate(near[::-1])[::-1]
    hit = np.flatnonzero(near)
    step = float(x[hit[0]]) if hit.size else None
    span = x[-1] - x[0]
    auc = float(y[0]) if span == 0 else float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)) / span)
    return Convergence(step, auc)


def curves_convergence(steps: ArrayLike, acc: ArrayLike, seconds: ArrayLike | None = None, tol: float = 1.0,
                       sustained: bool = False) -> dict[str, np.ndarray]:
    """``convergence`` of many runs at once (``acc [runs, evaluations]`` at ``steps``, e.g.
    ``batched.Curves``), each against its own final accuracy (the last column): arrays of
    ``steps`` to come within ``tol`` (NaN if never), ``seconds`` at that evaluation (when
    ``seconds [runs, evaluations]`` is given) and ``auc`` (mean accuracy over the step span)."""
    acc = np.asarray(acc, dtype=np.float64)
    if acc.ndim != 2:
        raise ValueError(f"acc must be [runs, evaluations], got shape {acc.shape}")
    x = np.asarray(steps, dtype=np.float64).reshape(-1)
    secs = None if seconds is None else np.asarray(seconds, dtype=np.float64)
    if secs is not None and secs.shape != acc.shape:
        raise ValueError(f"seconds must have acc's shape {acc.shape}, got {secs.shape}")
    out = {"steps": np.full(len(acc), np.nan), "auc": np.empty(len(acc))}
    if secs is not None:
        out["seconds"] = np.full(len(acc), np.nan)
    for i, row in enumerate(acc):
        c = convergence(x, row, final=row[-1], tol=tol, sustained=sustained)
        out["auc"][i] = c.auc
        if c.step is not None:
            out["steps"][i] = c.step
            if secs is not None:
                out["seconds"][i] = secs[i, int(np.flatnonzero(x == c.step)[0])]
    return out
