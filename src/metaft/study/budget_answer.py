"""The primary pair's answer per stage-1 budget: the meta init's paired difference to the
pre-trained init trained to the same number of examples (and full recipe against full recipe), per
(N, adaptation, K), with the crossed seeds x problems interval; a plot of the difference against
the stage-1 budget for each K. Only the full-recipe pair is the primary comparison (Holm, in the main
tables); the budget-matched pairs are exploratory."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from metaft.study import budgets, stats
from metaft.study.analysis import Study, _k_key, _legend, _where, save_figure


def rows(study: Study, examples: Mapping[str, float]) -> dict[tuple[str, str], list[tuple[str, str, str, dict[str, stats.Interval]]]]:
    """Per (N, adaptation): ``(budget, meta arm, pre-trained arm, {K: interval})``."""
    out: dict[tuple[str, str], list] = {}
    if study.primary is None:
        return out
    for key in sorted(study.cells):
        names = list(study.cells[key])
        found = []
        for b, m, p in budgets.pairs(names, study.primary.meta, study.primary.pretrained):
            per_k = {k: stats.crossed_t(study.paired(key, m, k, reference=p), 1 - study.alpha)
                     for k in study.shots if k in study.cells[key][m] and k in study.cells[key][p]}
            if per_k:
                found.append((b, m, p, per_k))
        if len(found) > 1 or (found and found[0][0] != budgets.FULL):
            out[key] = found
    return out


def arm_notes(study: Study, budget: str, meta: str, pretrained: str) -> str:
    """The full-recipe pair's labels, each with its arm (" (maml NOT CONVERGED)"); a budget row's
    label already says what it is."""
    if budget != budgets.FULL:
        return ""
    named = [f"{a}{study.notes[a].replace(' (', ' ').rstrip(')')}" for a in (meta, pretrained) if a in study.notes]
    return f" ({'; '.join(named)})" if named else ""


def markdown(study: Study, examples: Mapping[str, float]) -> list[str]:
    table = rows(study, examples)
    if not table:
        return []
    p = study.primary
    lines = ["## The primary pair at each stage-1 budget", "",
             f"{p.meta} minus {p.pretrained}, each trained to the same number of examples (the full recipe: each "
             "its own, converged where the stage-1 table says so), paired on the same problems; crossed seeds x problems t interval, "
             f"{100 * (1 - study.alpha):.0f}%, unadjusted (the full-recipe row's Holm-corrected test is in the answer "
             "above; the budget rows are exploratory).", ""]
    for key, found in table.items():
        lines += [f"### {_where(key[0])}, {key[1]}", "",
                  "| budget | examples (meta / pre-trained) | " + " | ".join(f"K={k}" for k in study.shots) + " |",
                  "|---|---|" + "---|" * len(study.shots)]
        for b, m, pre, per_k in found:
            ex = f"{examples.get(m, float('nan')):,.0f} / {examples.get(pre, float('nan')):,.0f}"
            cells = [f"{per_k[k].mean:+.2f} [{per_k[k].lo:+.2f}, {per_k[k].hi:+.2f}]" if k in per_k else "-" for k in study.shots]
            lines.append(f"| {b}{arm_notes(study, b, m, pre)} | {ex} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def plot(out: Path, study: Study, examples: Mapping[str, float], metric: str) -> list[Path]:
    """``study_budget_<N>way.png``: the paired difference against the stage-1 budget (the meta
    arm's examples, log scale), a line per K, a panel per adaptation."""
    table = rows(study, examples)
    if not table:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for ways in sorted({w for w, _ in table}):
        keys = [k for k in table if k[0] == ways]
        fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 4), squeeze=False)
        for j, key in enumerate(keys):
            ax = axes[0, j]
            for n, k in enumerate(sorted(study.shots, key=_k_key)):
                pts = [(examples.get(m, np.nan), per_k[k], b) for b, m, _, per_k in table[key] if k in per_k]
                pts = sorted((x, r, b) for x, r, b in pts if np.isfinite(x))
                if not pts:
                    continue
                x = [v[0] for v in pts]
                ax.errorbar(x, [v[1].mean for v in pts], yerr=[[v[1].mean - v[1].lo for v in pts], [v[1].hi - v[1].mean for v in pts]],
                            marker="o", capsize=3, label=f"K={k}", color=plt.get_cmap("tab10")(n))
                for xi, r, b in pts:
                    if b == budgets.FULL:
                        label = budgets.FULL + arm_notes(study, b, study.primary.meta, study.primary.pretrained)
                        ax.annotate(label, (xi, r.mean), fontsize=7, textcoords="offset points", xytext=(4, 4))
            ax.axhline(0, color="k", lw=0.8)
            ax.set_xscale("log")
            ax.set_xlabel(f"stage-1 training examples ({study.primary.meta})")
            ax.set_title(f"{_where(ways)}, {key[1]}: {study.primary.meta} - {study.primary.pretrained} ({metric})", fontsize=9)
            _legend(ax)
        files.append(save_figure(fig, out, "study_budget", ways))
    return files
