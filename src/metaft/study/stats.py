"""Statistics of the data-efficiency study and of ``metaft.compare``: paired differences between
two inits on the same target problems; intervals built for the design that produced them (crossed:
every seed scored on the same problems, ``crossed_t``; nested: each seed its own episodes,
``nested_t``); Holm's correction over the primary family; Cohen's d; convergence summaries of
fine-tuning curves. ``metaft.study.coverage`` measures the intervals' coverage by simulation.

Pure functions of numbers (numpy), no Lightning: the driver collects the per-problem accuracies.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import NamedTuple, TypeVar

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import t as student_t

T = TypeVar("T")


# ------------------------------------------------------------------------------- Student's t
def t_two_sided_p(t: float, df: float) -> float:
    """``P(|T| >= |t|)`` for Student's t with ``df`` (> 0, any real) degrees of freedom."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    return float(2.0 * student_t.sf(abs(t), df))


def t_tail_quantile(tail: float, df: float) -> float:
    """The t > 0 with two-sided tail ``P(|T| >= t) = tail`` (``0 < tail < 1``); taking the tail
    itself (``isf``) keeps tails far below 1e-16 exact, as Holm's correction needs."""
    if not 0 < tail < 1:
        raise ValueError(f"tail must be in (0, 1), got {tail}")
    if df <= 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    return float(student_t.isf(tail / 2.0, df))


def t_quantile(q: float, df: float) -> float:
    """The ``q`` quantile of Student's t with ``df`` degrees of freedom, ``0 < q < 1``."""
    if not 0 < q < 1:
        raise ValueError(f"q must be in (0, 1), got {q}")
    return float(student_t.ppf(q, df))


def paired_differences(a: Sequence[Mapping[str, float]], b: Sequence[Mapping[str, float]]) -> list[np.ndarray]:
    """Per checkpoint seed, ``a - b`` on every target problem, matched by problem fingerprint.

    ``a[s]`` / ``b[s]``: the metric of init A / B (checkpoint seed ``s``) on each problem, keyed by
    the problem's fingerprint. Seeds are paired by position: seed ``s`` of A with seed ``s`` of B
    (independent checkpoints, so any fixed pairing is as good; the interval treats the pairs as
    a sample). Both must have been run on exactly the same problems, otherwise the comparison would
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


CROSSED = ("two-way crossed t interval (seeds x problems: seed, problem and residual variance components, "
           "each with its own t quantile)")
NESTED = "t interval on seed means (each seed its own episodes: nested, df = seeds - 1)"
ONE_SEED = "t interval over {what} (one seed: covers the {what}, not the spread between training runs)"
ONE_PROBLEM = "t interval on seed means (one problem per seed)"


class Interval(NamedTuple):
    """A mean with its two-sided CI at ``level``, the p-value for H0: mean = ``null`` (0 unless
    given; the smallest alpha whose ``1 - alpha`` interval excludes it, so interval and p agree),
    the standard error, and the method's name (for the reports)."""

    mean: float
    lo: float
    hi: float
    p: float
    se: float
    level: float
    method: str


_P_FLOOR = 1e-100  # p-values below are reported as 0 (1 df: t ~ 6e99, still a finite square)


def _combined_interval(mean: float, parts: Sequence[tuple[float, float]], level: float, method: str,
                       null: float = 0.0) -> Interval:
    """``mean +- sqrt(sum_i (t_i * se_i)^2)`` for the variance parts ``(se_i^2, df_i)``, ``t_i`` the
    t quantile of ``df_i`` at ``level``. One part: Student's t. Several: each part's uncertainty
    about its own size enters through its own df, so a part estimated from 3 seeds gets t(2)'s tail
    when it dominates, and the well-estimated parts stay near the normal quantile (slightly
    conservative in between; coverage measured by ``metaft.study.coverage``). The p-value inverts
    the interval."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    parts = [(v, d) for v, d in parts if v > 0]
    se = math.sqrt(sum(v for v, _ in parts))
    if not parts:  # no spread at all: the data pin the mean down exactly
        return Interval(mean, mean, mean, float(mean == null), 0.0, level, method)

    def half(tail: float) -> float:
        return math.sqrt(sum(t_tail_quantile(tail, d) ** 2 * v for v, d in parts))

    h = half(1 - level)
    gap = abs(mean - null)
    if len(parts) == 1:
        p = t_two_sided_p(gap / se, parts[0][1])
    elif gap == 0:
        p = 1.0
    else:  # half(alpha) falls as alpha grows: bisect log(alpha) for half = gap
        lo, hi = math.log(_P_FLOOR), 0.0
        if half(_P_FLOOR) <= gap:
            p = 0.0  # below _P_FLOOR: reported as 0
        else:
            for _ in range(60):
                mid = 0.5 * (lo + hi)
                if half(math.exp(mid)) > gap:
                    lo = mid
                else:
                    hi = mid
                if hi - lo < 1e-10:
                    break
            p = math.exp(0.5 * (lo + hi))
    return Interval(mean, mean - h, mean + h, min(1.0, p), se, level, method)


def one_sample_t(values: ArrayLike, level: float = 0.95, method: str = "t interval", null: float = 0.0) -> Interval:
    """Student's t interval of the mean of independent values (n - 1 df)."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size < 2 or not np.isfinite(x).all():
        raise ValueError(f"a t interval needs at least 2 finite values, got {x.size} ({method})")
    return _combined_interval(float(x.mean()), [(float(x.var(ddof=1)) / x.size, x.size - 1)], level, method, null)


def crossed_matrix(by_seed: Sequence[Mapping[str, float]]) -> np.ndarray:
    """``[seeds, problems]`` from one ``{problem fingerprint: value}`` per seed, columns in sorted
    fingerprint order; every seed must have been scored on the same problems (a crossed design)."""
    if not by_seed:
        raise ValueError("crossed_matrix: no seeds given")
    keys = sorted(by_seed[0])
    for s, row in enumerate(by_seed[1:], start=1):
        if set(row) != set(keys):
            extra, missing = sorted(set(row) - set(keys)), sorted(set(keys) - set(row))
            raise ValueError(f"seed {s} was scored on other problems than seed 0 ({len(extra)} extra, e.g. {extra[:3]}; "
                             f"{len(missing)} missing, e.g. {missing[:3]}): the crossed interval needs every seed on "
                             "the same problems (the study draws them from target.seed alone)")
    if not keys:
        raise ValueError("crossed_matrix: the seeds have no problems")
    return np.array([[row[k] for k in keys] for row in by_seed], dtype=np.float64)


def crossed_t(values: ArrayLike, level: float = 0.95, null: float = 0.0) -> Interval:
    """CI of the grand mean of ``values [seeds, problems]`` when every seed is scored on the same
    problems (crossed), seeds and problems both random samples:
    ``x[s, p] = mu + a_s + b_p + e_sp``, ``Var(mean) = s2_a / S + s2_b / P + s2_e / (S P)``.

    The three parts come from the two-way ANOVA mean squares, ``(MS_seed - MS_error) / (S P)``
    (S - 1 df), ``(MS_problem - MS_error) / (S P)`` (P - 1 df), ``MS_error / (S P)`` ((S-1)(P-1) df),
    the first two clipped at 0, and are combined by ``_combined_interval``. Why not resample: a
    problem effect shared by every seed moves all seed means together, so resampling problems per
    seed (nested) misses it; a t interval on the seed means alone misses it too; and with 3 seeds a
    bootstrap over seeds sees 2/3 of their variance and no t tail. One seed or one problem reduce
    to a one-sample t. Coverage by simulation: ``metaft.study.coverage``."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 2 or x.size == 0:
        raise ValueError(f"crossed_t needs a [seeds, problems] matrix, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("crossed_t: the values hold NaN or Inf; drop the failed problems for every seed first")
    s, p = x.shape
    if s == 1:
        return one_sample_t(x[0], level, ONE_SEED.format(what="problems"), null)
    if p == 1:
        return one_sample_t(x[:, 0], level, ONE_PROBLEM, null)
    grand, seed_means, problem_means = float(x.mean()), x.mean(1), x.mean(0)
    ms_seed = p * ((seed_means - grand) ** 2).sum() / (s - 1)
    ms_problem = s * ((problem_means - grand) ** 2).sum() / (p - 1)
    resid = x - seed_means[:, None] - problem_means[None, :] + grand
    ms_error = (resid ** 2).sum() / ((s - 1) * (p - 1))
    n = s * p
    parts = [(max(0.0, ms_seed - ms_error) / n, s - 1), (max(0.0, ms_problem - ms_error) / n, p - 1),
             (ms_error / n, (s - 1) * (p - 1))]
    return _combined_interval(grand, parts, level, CROSSED, null)


def nested_t(values_by_seed: Sequence[ArrayLike], level: float = 0.95, null: float = 0.0) -> Interval:
    """CI of the mean over seeds of each seed's mean when every seed has its own episodes (nested:
    ``x[s, e] = mu + a_s + e_se``): the seed means are independent, ``Var(m_s) = s2_a + s2_e / E``,
    so Student's t on the seed means with ``seeds - 1`` df is exact for normal data, whatever the
    two variances. One seed: a t over its episodes (labelled: it misses the spread between runs)."""
    xs = [np.asarray(v, dtype=np.float64).reshape(-1) for v in values_by_seed]
    if not xs or any(x.size == 0 for x in xs):
        raise ValueError("nested_t needs at least one seed, each with at least one value")
    if not all(np.isfinite(x).all() for x in xs):
        raise ValueError("nested_t: the values hold NaN or Inf; drop the failed episodes first")
    if len(xs) == 1:
        return one_sample_t(xs[0], level, ONE_SEED.format(what="episodes"), null)
    return one_sample_t([x.mean() for x in xs], level, NESTED, null)


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
    """One hypothesis of a Holm family: its interval at the nominal level (``raw``), the
    Holm-adjusted p-value, the decision at family-wise ``alpha``, and the CI at the level Holm
    tests this hypothesis at (``1 - alpha / (m - rank)``, rank by raw p)."""

    raw: Interval
    p_holm: float
    reject: bool
    level: float
    lo: float
    hi: float


def holm_family(data: Mapping[Hashable, T], interval: Callable[[T, float], Interval],
                alpha: float = 0.05) -> dict[Hashable, HolmResult]:
    """Holm's correction over a family of hypotheses ``data[key]`` (each "mean = 0"), with
    ``interval(data[key], level)`` giving a hypothesis' CI and p-value (``crossed_t``). The p-values
    are analytic, so the correction can reject however large the family (a bootstrap's p cannot go
    below 1 / (B + 1)). The step-down intervals match the decisions for the hypotheses Holm reaches;
    they are not simultaneous intervals (Bonferroni's ``1 - alpha / m`` is the simple choice for
    those)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    keys = list(data)
    if not keys:
        raise ValueError("holm_family: no hypotheses given")
    raw = [interval(data[k], 1 - alpha) for k in keys]
    p_adj = holm([r.p for r in raw])
    rank = np.empty(len(keys), dtype=int)
    rank[np.argsort([r.p for r in raw], kind="stable")] = np.arange(len(keys))
    out = {}
    for i, k in enumerate(keys):
        level = 1 - alpha / (len(keys) - rank[i])
        at = interval(data[k], level)
        out[k] = HolmResult(raw[i], float(p_adj[i]), bool(p_adj[i] <= alpha), level, at.lo, at.hi)
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
