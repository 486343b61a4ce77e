""""Converges faster", as the claim states it, for the primary pair (at each stage-1 budget both
were trained to): full fine-tuning's steps and seconds to reach a shared target, the pre-trained
arm's mean final metric at that (N, K), per problem; a problem that never reaches it within the
curve's last step is censored there (the restricted mean: a censored problem counts the step
limit, so the difference is a bound where many are censored, and the counts are given); and the
metric after 0, 10, 50 and 200 steps. Each as the meta arm's paired difference to the pre-trained
arm with the crossed seeds x problems interval (exploratory)."""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from metaft.study import budgets, stats
from metaft.study.budget_answer import arm_notes
from metaft.study.analysis import Study, _k_key, _ways, _where, finetune_curves

AFTER = (0, 10, 50, 200)


def to_target(steps: list[int], values: list[float], target: float, lower: bool) -> tuple[float, bool]:
    """(first step at which the curve reaches ``target``, censored): the last step and True if never."""
    for s, v in zip(steps, values):
        if (v <= target) if lower else (v >= target):
            return float(s), False
    return float(steps[-1]), True


def _matrix(per_seed: dict[str, dict[str, float]]) -> np.ndarray:
    return stats.crossed_matrix([per_seed[s] for s in sorted(per_seed)])


def table(study: Study, metric: str) -> list[str]:
    """Markdown: per budget pair and (N, K), the target, censored counts, steps and seconds to it and
    the metric after ``AFTER`` steps, each meta minus pre-trained [CI]; steps and seconds: lower is faster."""
    if study.primary is None:
        return []
    curves = finetune_curves(study)
    names = sorted({init for (_, _, init) in curves})
    lines: list[str] = []
    sign = -1.0 if study.lower else 1.0  # metric differences: positive = the meta arm better
    for b, m, p in budgets.pairs(names, study.primary.meta, study.primary.pretrained):
        for ways, k in sorted({(w, k) for (w, k, _) in curves}, key=lambda x: (x[0], _k_key(x[1]))):
            if (ways, k, m) not in curves or (ways, k, p) not in curves:
                continue
            cm, cp = curves[ways, k, m], curves[ways, k, p]
            seeds = sorted(set(cm) & set(cp))
            if not seeds:
                continue
            # The target: the pre-trained arm's mean final (chosen-step) metric at this (N, K).
            cell = study.cells.get((_ways(ways), "finetune"), {}).get(p, {}).get(k, {})
            finals = [v for s in cell.values() for v in s.values()]
            if not finals:
                continue
            target = float(np.mean(finals))
            steps_d, secs_d, cens = defaultdict(dict), defaultdict(dict), {m: 0, p: 0}
            after: dict[int, dict] = {a: defaultdict(dict) for a in AFTER}
            limit = None
            for s in seeds:
                for fp in set(cm[s]) & set(cp[s]):
                    got = {}
                    for init, c in ((m, cm[s][fp]), (p, cp[s][fp])):
                        st, cen = to_target(c[0], c[1], target, study.lower)
                        cens[init] += cen
                        got[init] = (st, 1000 * st * c[2])  # milliseconds
                        limit = c[0][-1]
                    steps_d[s][fp] = got[m][0] - got[p][0]
                    secs_d[s][fp] = got[m][1] - got[p][1]
                    for a in AFTER:
                        sm, vm, _ = cm[s][fp]
                        sp, vp, _ = cp[s][fp]
                        if a in sm and a in sp:
                            after[a][s][fp] = sign * (vm[sm.index(a)] - vp[sp.index(a)])
            n = sum(len(v) for v in steps_d.values())
            level = 1 - study.alpha

            def fmt(per_seed: dict, digits: int = 1) -> str:
                if not per_seed or not all(per_seed.values()):
                    return "-"
                r = stats.crossed_t(_matrix(per_seed), level)
                return f"{r.mean:+.{digits}f} [{r.lo:+.{digits}f}, {r.hi:+.{digits}f}]" if np.isfinite(r.mean) else "-"

            if not lines:
                lines = ["## Convergence of full fine-tuning: the primary pair", "",
                         f"Target: {study.primary.pretrained}'s mean final test {metric} at that (N, K) (per budget, "
                         f"the pre-trained arm of that budget). Steps and milliseconds to reach it per problem, {study.primary.meta} "
                         "minus the pre-trained arm (negative: the meta arm is faster); a problem that never reaches it is "
                         "censored at the curve's last step (restricted mean; the censored counts are given). Then the "
                         f"difference in test {metric} after 0, 10, 50 and 200 steps (positive: the meta arm better; - where "
                         "the curve does not reach that step). Crossed seeds x problems t intervals, "
                         f"{100 * level:.0f}%, exploratory.", "",
                         "| budget | N | K | target | censored (meta / pre-trained, of n) | steps | ms | "
                         + " | ".join(f"after {a}" for a in AFTER) + " |",
                         "|---|---|---|---|---|---|---|" + "---|" * len(AFTER)]
            note = arm_notes(study, b, m, p)
            lines.append(f"| {b}{note} | {_where(ways)} | {k} | {target:.2f} | {cens[m]} / {cens[p]} of {n} (limit {limit}) | "
                         f"{fmt(steps_d)} | {fmt(secs_d, 2)} | " + " | ".join(fmt(after[a], 2) for a in AFTER) + " |")
    return lines + [""] if lines else []
