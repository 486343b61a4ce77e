"""Coverage of the study's and ``metaft.compare``'s intervals, by simulation with a known truth:

    python -m metaft.study.coverage [--reps 2000] [--seed 0]

A simulated data set is ``x[s, p] = a_s + b_p + e_sp`` (crossed: every seed scored on the same
problems, ``b_p`` shared by all seeds) or ``a_s + b_sp + e_sp`` (nested: each seed its own
episodes), all effects normal with mean 0, so the truth is 0; the coverage is the share of data sets
whose interval contains 0. Standard deviations are in units of the problem effect's (1); the
interaction ``e`` has sd 1 too, close to the study's Omniglot differences, where a problem's own
difficulty and its seed-to-seed noise are of similar size. A seed effect is given in units of the
problem mean's standard error ``1 / sqrt(P)``: at 1 seeds and problems add equal variance to the
grand mean. The former interval of the study (resampling problems independently per seed, as if
nested) is measured too, for the record.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from metaft.study.stats import crossed_t, nested_t

Method = Callable[[np.ndarray, float], tuple[float, float]]


def crossed_interval(x: np.ndarray, level: float) -> tuple[float, float]:
    """The study's interval (``stats.crossed_t``)."""
    r = crossed_t(x, level)
    return r.lo, r.hi


def nested_interval(x: np.ndarray, level: float) -> tuple[float, float]:
    """``metaft.compare``'s interval for runs scored on their own episodes (``stats.nested_t``)."""
    r = nested_t(list(x), level)
    return r.lo, r.hi


def former_nested_bootstrap(x: np.ndarray, level: float, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """The study's interval before issue 28 (kept here only to measure it): seeds resampled, then
    each chosen seed's problems resampled on their own, percentile interval."""
    rng = np.random.default_rng(seed)
    s, p = x.shape
    seeds = rng.integers(0, s, size=(n_boot, s))
    problems = rng.integers(0, p, size=(n_boot, s, p))
    stat = x[seeds[:, :, None], problems].mean((1, 2))
    lo, hi = np.quantile(stat, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def simulate(design: str, seeds: int, problems: int, seed_effect: float, reps: int, rng: np.random.Generator,
             method: Method, level: float = 0.95) -> tuple[float, float]:
    """(coverage, mean half-width) of ``method`` on ``reps`` simulated data sets of ``design``
    (crossed | nested) with ``seeds x problems`` values and a seed effect of ``seed_effect``
    problem-mean standard errors (problem and interaction sd 1)."""
    if design not in ("crossed", "nested"):
        raise ValueError(f"design must be crossed or nested, got {design!r}")
    sd_seed = seed_effect / np.sqrt(problems)
    hits, widths = 0, []
    for _ in range(reps):
        a = rng.normal(0.0, sd_seed, (seeds, 1))
        b = rng.normal(0.0, 1.0, (1, problems) if design == "crossed" else (seeds, problems))
        x = a + b + rng.normal(0.0, 1.0, (seeds, problems))
        lo, hi = method(x, level)
        hits += lo <= 0.0 <= hi
        widths.append((hi - lo) / 2)
    return hits / reps, float(np.mean(widths))


class Row(NamedTuple):
    design: str
    seeds: int
    problems: int
    seed_effect: float
    method: str
    reps: int
    coverage: float
    half_width: float


METHODS: dict[str, Method] = {"crossed t (the study)": crossed_interval, "nested t (compare, own episodes)": nested_interval,
                              "former nested bootstrap": former_nested_bootstrap}


def table(reps: int, seed: int) -> list[Row]:
    """The figures of docs/results.md: the study's presets (3 seeds; 300 and 600 problems), 5
    seeds, and compare's nested design, without and with a seed effect."""
    cases = [("crossed", 3, 300, 0.0, "crossed t (the study)"), ("crossed", 3, 600, 0.0, "crossed t (the study)"),
             ("crossed", 5, 600, 0.0, "crossed t (the study)"), ("crossed", 3, 300, 1.0, "crossed t (the study)"),
             ("crossed", 3, 300, 3.0, "crossed t (the study)"), ("crossed", 5, 600, 1.0, "crossed t (the study)"),
             ("crossed", 3, 300, 10.0, "crossed t (the study)"),
             ("nested", 3, 1000, 0.0, "nested t (compare, own episodes)"),
             ("nested", 3, 1000, 3.0, "nested t (compare, own episodes)"),
             ("crossed", 3, 300, 0.0, "former nested bootstrap"), ("crossed", 5, 600, 0.0, "former nested bootstrap"),
             ("crossed", 3, 300, 3.0, "former nested bootstrap")]
    rows = []
    for i, (design, s, p, effect, name) in enumerate(cases):
        n = reps if name != "former nested bootstrap" else max(reps // 10, 50)  # 1,000 resamples per data set
        cov, half = simulate(design, s, p, effect, n, np.random.default_rng([seed, i]), METHODS[name])
        rows.append(Row(design, s, p, effect, name, n, cov, half))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m metaft.study.coverage", description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=2000, help="simulated data sets per row (a tenth for the bootstrap)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print("| design | seeds | problems | seed effect (problem-mean SEs) | interval | data sets | coverage of 95% | "
          "mean half-width |")
    print("|---|---|---|---|---|---|---|---|")
    for r in table(args.reps, args.seed):
        print(f"| {r.design} | {r.seeds} | {r.problems} | {r.seed_effect:g} | {r.method} | {r.reps} | "
              f"{100 * r.coverage:.1f}% | {r.half_width:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
