"""Labels per class needed: for each init and adaptation, the K at which its mean metric over the
target problems first reaches a stated level (``labels.targets``: accuracies in percent, or MSEs
for regression), per stage-1 seed, read off the curve against K (linear in log K between two
measured Ks). With nested supports (``target.nested``) the curve adds labels to the same problems."""
from __future__ import annotations

import math
from collections import defaultdict

import numpy as np


def needed(ks: list[float], values: list[float], target: float, lower: bool = False) -> float:
    """The smallest K at which ``values`` (one per K of ``ks``, ascending) reaches ``target``
    (``>=``; ``<=`` when ``lower``), interpolated linearly in log K between the two Ks around the
    crossing; ``ks[0]`` when the first K reaches it already, ``inf`` when no K does."""
    if len(ks) != len(values) or not ks or any(b <= a for a, b in zip(ks, ks[1:])):
        raise ValueError(f"needed: give one value per K, Ks ascending, got {ks} and {values}")
    sign = -1.0 if lower else 1.0
    v = [sign * x for x in values]
    t = sign * target
    if v[0] >= t:
        return float(ks[0])
    for (k0, v0), (k1, v1) in zip(zip(ks, v), zip(ks[1:], v[1:])):
        if v1 == t:
            return float(k1)
        if v1 > t:  # first crossing: v0 < t < v1
            frac = (t - v0) / (v1 - v0)
            return float(math.exp(math.log(k0) + frac * (math.log(k1) - math.log(k0))))
    return math.inf


def _k(shots: str, all_shots: int) -> float:
    return float(all_shots) if shots == "all" else float(shots)


def table(rows: list[dict[str, str]], targets: list[float], all_shots: int, lower: bool = False) -> list[str]:
    """Markdown: per (N, adaptation), each init's labels per class needed to reach each target,
    the mean over seeds with the seeds' range; a seed that never reaches it at the largest K
    makes the cell ``> K`` with the count of such seeds."""
    if not targets:
        return []
    means: dict[tuple[str, str, str, str], dict[float, float]] = defaultdict(dict)
    cells: dict[tuple[str, str, str, str, str], list[float]] = defaultdict(list)
    for r in rows:
        cells[r["ways"], r["adaptation"], r["init"], r["seed"], r["shots"]].append(float(r["metric"]))
    for (ways, adaptation, init, seed, shots), vals in cells.items():
        finite = [v for v in vals if math.isfinite(v)]
        if finite:
            means[ways, adaptation, init, seed][_k(shots, all_shots)] = float(np.mean(finite))
    what = "MSE at or below" if lower else "accuracy (%) of at least"
    out = ["## Labels per class needed", "",
           f"The labels per class each init needs to reach a mean {what} each target (per seed, linear in log K "
           "between measured Ks; mean over seeds [min, max]; a K at or below the smallest measured K counts as it)."]
    for ways, adaptation in sorted({(w, a) for w, a, _, _ in means}):
        inits = sorted({i for w, a, i, _ in means if (w, a) == (ways, adaptation)})
        out += ["", f"### {'regression' if ways in ('None', '') else ways + '-way'}, {adaptation}", "",
                "| init | " + " | ".join(f"{t:g}" for t in targets) + " |",
                "|---|" + "---|" * len(targets)]
        for init in inits:
            seeds = [means[k] for k in sorted(means) if k[:3] == (ways, adaptation, init)]
            row = []
            for t in targets:
                ks = [needed(sorted(m), [m[k] for k in sorted(m)], t, lower) for m in seeds]
                never = sum(math.isinf(k) for k in ks)
                if never:
                    row.append(f"> {max(max(m) for m in seeds):g} ({never}/{len(ks)} seeds)")
                else:
                    row.append(f"{np.mean(ks):.1f} [{min(ks):.1f}, {max(ks):.1f}]")
            out.append(f"| {init} | " + " | ".join(row) + " |")
    return out
