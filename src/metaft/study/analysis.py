"""The study's report: per (N, adaptation) each init's metric against K with its CI (the crossed
seeds x problems interval, ``stats.crossed_t``), the primary comparison named in the protocol
(Holm over its family), every other paired difference to the primary pre-trained init as
exploratory (unadjusted), Cohen's d, fine-tuning convergence, the answer in words, ``study.md``
and plots (also in TensorBoard)."""
from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

import numpy as np

from metaft.study import stats
from metaft.study.protocol import Primary

CONFIG = "study_config.yaml"
FIELDS = ["init", "seed", "ways", "shots", "adaptation", "problem", "fingerprint", "metric", "bn",
          "chosen_step", "chosen_lr", "chosen_start", "chosen_optimizer", "steps_to_final", "seconds_to_final", "auc", "curve",
          "chosen_reg", "seconds_per_step"]


def format_curve(steps: list[int], values: list[float]) -> str:
    """A fine-tuning curve as one CSV cell: ``step:metric`` pairs joined by ``;``."""
    return ";".join(f"{s}:{v:.6g}" for s, v in zip(steps, values))


def parse_curve(cell: str) -> tuple[list[int], list[float]]:
    pairs = [p.split(":") for p in cell.split(";") if p]
    return [int(s) for s, _ in pairs], [float(v) for _, v in pairs]


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _where(ways: str) -> str:
    return "regression" if ways in ("None", "") else f"{ways}-way"


def _k_key(k: str) -> tuple[int, float]:
    return (1, 0.0) if k == "all" else (0, float(k))


class Difference(NamedTuple):
    """One init's paired difference to the reference at one (N, adaptation, K), positive = the
    init is better: ``lo``/``hi`` at ``level`` (Holm's level for a primary hypothesis, else the
    nominal one), ``p`` (Holm-adjusted for a primary hypothesis, else unadjusted), Cohen's d_z."""

    mean: float
    lo: float
    hi: float
    p: float
    level: float
    primary: bool
    reject: bool
    d: float


class Study:
    """The rows indexed as ``cells[(ways, adaptation)][init][shots][seed] = {fingerprint: metric}``.

    ``reference``: the pre-trained init every difference is taken to, fixed by the protocol
    (``primary.pretrained``; without a primary comparison, the first of ``pretrained``), never
    chosen on the test problems. ``primary``: Holm's family; every other difference is exploratory."""

    def __init__(self, rows: list[dict[str, str]], reference: str | None, primary: Primary | None,
                 lower_is_better: bool, alpha: float) -> None:
        self.rows, self.reference, self.primary, self.lower, self.alpha = rows, reference, primary, lower_is_better, alpha
        self.notes: dict[str, str] = {}  # init -> a label shown beside its name (" (NOT CONVERGED)")
        self.cells: dict[tuple[str, str], dict[str, dict[str, dict[str, dict[str, float]]]]] = defaultdict(
            lambda: defaultdict(lambda: defaultdict(dict)))
        # A problem on which some init's adaptation diverged (a non-finite metric) is left out for
        # every init of that (N, K, adaptation): the comparison stays paired; the count is reported.
        diverged = {(r["ways"], r["shots"], r["adaptation"], r["fingerprint"]) for r in rows
                    if not np.isfinite(float(r["metric"]))}
        self.excluded: dict[tuple[str, str, str], set[str]] = defaultdict(set)
        for w, k, a, fp in diverged:
            self.excluded[w, k, a].add(fp)
        for r in rows:
            if (r["ways"], r["shots"], r["adaptation"], r["fingerprint"]) in diverged:
                continue
            self.cells[_ways(r["ways"]), r["adaptation"]][r["init"]][r["shots"]].setdefault(r["seed"], {})[r["fingerprint"]] = float(r["metric"])
        self.shots = sorted({r["shots"] for r in rows}, key=_k_key)
        self._primary: dict[tuple[str, str, str], stats.HolmResult] | None = None
        # The markdown and the plots ask for the same intervals: computed once per (N, adaptation).
        self._summary: dict[tuple[str, str], dict[str, dict[str, stats.Interval]]] = {}
        self._differences: dict[tuple[str, str], dict[str, dict[str, Difference]]] = {}

    def by_seed(self, cell: dict[str, dict[str, float]]) -> list[dict[str, float]]:
        return [cell[s] for s in sorted(cell)]

    def summary(self, key: tuple[str, str]) -> dict[str, dict[str, stats.Interval]]:
        """Each init's mean metric per K with its crossed (seeds x problems) CI."""
        if key not in self._summary:
            self._summary[key] = {init: {k: stats.crossed_t(stats.crossed_matrix(self.by_seed(cell)), 1 - self.alpha)
                                         for k, cell in per_k.items()} for init, per_k in self.cells[key].items()}
        return self._summary[key]

    def paired(self, key: tuple[str, str], init: str, k: str, reference: str | None = None) -> np.ndarray:
        """``[seeds, problems]`` paired differences of ``init`` to ``reference`` (default: the
        study's reference; positive: better)."""
        ref = self.reference if reference is None else reference
        a, b = self.by_seed(self.cells[key][init][k]), self.by_seed(self.cells[key][ref][k])
        diffs = stats.paired_differences(b, a) if self.lower else stats.paired_differences(a, b)
        keys = [sorted(s) for s in a]
        return stats.crossed_matrix([dict(zip(ks, d)) for ks, d in zip(keys, diffs)])

    def primary_results(self) -> dict[tuple[str, str, str], stats.HolmResult]:
        """Holm over the primary family's hypotheses that have data (an adaptation that does not
        apply to an init has none; ``missing_primary`` names them)."""
        if self._primary is None:
            self._primary = {}
            have = {h: self.paired((h[0], h[1]), self.primary.meta, h[2]) for h in self._present()}
            if have:
                self._primary = stats.holm_family(have, stats.crossed_t, self.alpha)
        return self._primary

    def _present(self) -> list[tuple[str, str, str]]:
        if self.primary is None or self.reference is None:
            return []
        return [(w, a, k) for w, a, k in self.primary.family
                if k in self.cells[w, a].get(self.primary.meta, {}) and k in self.cells[w, a].get(self.reference, {})]

    def missing_primary(self) -> list[tuple[str, str, str]]:
        present = set(self._present())
        return [] if self.primary is None else [h for h in self.primary.family if h not in present]

    def differences(self, key: tuple[str, str]) -> dict[str, dict[str, Difference]]:
        """Per init: the paired difference to the reference per K: Holm's for the primary meta
        init on its family, unadjusted 95% (exploratory) for everything else."""
        if key in self._differences:
            return self._differences[key]
        out: dict[str, dict[str, Difference]] = self._differences.setdefault(key, {})
        ref = self.reference
        if ref is None or ref not in self.cells[key]:
            return out
        holm = self.primary_results()
        for init, per_k in self.cells[key].items():
            if init == ref:
                continue
            out[init] = {}
            for k in (k for k in per_k if k in self.cells[key][ref]):
                x = self.paired(key, init, k)
                d = stats.cohens_d(list(x))
                h = holm.get((key[0], key[1], k)) if self.primary is not None and init == self.primary.meta else None
                if h is not None:
                    out[init][k] = Difference(h.raw.mean, h.lo, h.hi, h.p_holm, h.level, True, h.reject, d)
                else:
                    r = stats.crossed_t(x, 1 - self.alpha)
                    out[init][k] = Difference(r.mean, r.lo, r.hi, r.p, r.level, False, r.p <= self.alpha, d)
        return out


def _ways(ways: str) -> str:
    return "" if ways in ("None", "") else ways


def answer(study: Study, metric: str) -> list[str]:
    """The primary comparison in words, per (N, adaptation) of its family, then what is exploratory."""
    unit = "points" if metric == "acc" else "MSE"
    ref = study.reference
    if study.primary is None:
        return [f"- No primary comparison was named in this study's protocol before it ran (`primary` in {CONFIG}): "
                f"every difference below, each init against {ref}, is exploratory (unadjusted "
                f"{100 * (1 - study.alpha):.0f}% CIs, no correction for the many comparisons)."]
    p, res = study.primary, study.primary_results()
    lines = [f"Primary comparison, named in the protocol before anything ran (`primary` in {CONFIG}): **{p.meta} against "
             f"{ref}**, a family of {len(res)} hypotheses (N x adaptation x K), Holm-corrected at family-wise "
             f"alpha={study.alpha}; differences in {unit}, positive = {p.meta} better, each CI at the level Holm tests "
             "it at.", ""]
    for key in sorted({(w, a) for w, a, _ in res}):
        better, worse, tied = [], [], []
        for k in sorted((k for w, a, k in res if (w, a) == key), key=_k_key):
            h = res[key[0], key[1], k]
            text = f"K={k}: {h.raw.mean:+.2f} [{h.lo:+.2f}, {h.hi:+.2f}] (p={h.p_holm:.2g})"
            (better if h.reject and h.raw.mean > 0 else worse if h.reject else tied).append(text)
        parts = [f"beats {ref} at {'; '.join(better)}"] * bool(better) + [f"is worse than {ref} at {'; '.join(worse)}"] * bool(worse)
        if tied:
            parts.append(f"is not distinguishable from {ref} at {'; '.join(tied)}")
        lines.append(f"- {_where(key[0])}, {key[1]}: {p.meta} " + "; it ".join(parts) + ".")
    missing = study.missing_primary()
    if missing:
        lines.append("- Named in the primary family but without data (the adaptation does not apply to an init, or was "
                     "not run): " + ", ".join(f"{_where(w)} {a} K={k}" for w, a, k in missing) + ".")
    lines += ["", f"Everything else (other inits, other adaptations or K's) is **exploratory**: differences to {ref} with "
              f"unadjusted {100 * (1 - study.alpha):.0f}% CIs and p-values, no correction for the many comparisons, "
              "in the tables below (marked `expl.`); read them as questions for a next study, not answers."]
    return lines


def markdown(study: Study, metric: str, header: list[str]) -> str:
    lines = [*header, "", "## The answer", "", *answer(study, metric), ""]
    if study.excluded:
        lines += ["Problems left out for every init because some init's adaptation diverged on them (a "
                  "non-finite metric): " + "; ".join(f"N={w}, K={k}, {a}: {len(v)}"
                                                    for (w, k, a), v in sorted(study.excluded.items())), ""]
    better = "lower" if study.lower else "higher"
    level = f"{100 * (1 - study.alpha):.0f}%"
    for key in sorted(study.cells):
        ways, adaptation = key
        summ, diffs, ref = study.summary(key), study.differences(key), study.reference
        lines += [f"## {_where(ways)}, {adaptation}: test {metric} ({better} is better), mean [{level} CI]", "",
                  "| init | " + " | ".join(f"K={k}" for k in study.shots) + " |",
                  "|---|" + "---|" * len(study.shots)]
        for init in sorted(summ):
            cells = [f"{summ[init][k].mean:.2f} [{summ[init][k].lo:.2f}, {summ[init][k].hi:.2f}]" if k in summ[init] else "-"
                     for k in study.shots]
            lines.append(f"| {init}{study.notes.get(init, '')}{' (reference)' if init == ref else ''} | "
                         + " | ".join(cells) + " |")
        if diffs:
            lines += ["", f"Paired difference to {ref} (positive: better than {ref}) [CI], p, Cohen's d_z; `primary`: "
                      "Holm-adjusted p and the CI at Holm's level; `expl.`: exploratory, unadjusted:", "",
                      "| init | " + " | ".join(f"K={k}" for k in study.shots) + " |", "|---|" + "---|" * len(study.shots)]
            for init in sorted(diffs):
                cells = []
                for k in study.shots:
                    if k not in diffs[init]:
                        cells.append("-")
                        continue
                    h = diffs[init][k]
                    cells.append(f"{h.mean:+.2f} [{h.lo:+.2f}, {h.hi:+.2f}] p={h.p:.3g} d={h.d:.2f} "
                                 f"{'primary' if h.primary else 'expl.'}")
                lines.append(f"| {init}{study.notes.get(init, '')} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def convergence_table(rows: list[dict[str, str]]) -> list[str]:
    """Full fine-tuning: mean steps and seconds to come within the tolerance of the final metric,
    and the area under the curve, per (N, init, K)."""
    acc: dict[tuple[str, str, str], list[tuple[float, float, float]]] = defaultdict(list)
    for r in rows:
        if r["adaptation"] == "finetune" and r["steps_to_final"] != "":
            acc[r["ways"], r["init"], r["shots"]].append((float(r["steps_to_final"]), float(r["seconds_to_final"]),
                                                         float(r["auc"])))
    if not acc:
        return []
    lines = ["## Convergence of full fine-tuning", "",
             "Steps (milliseconds) to come within the tolerance of the run's final metric, and the area under the "
             "metric-vs-step curve (mean over problems and seeds).", "", "| N | init | K | steps | ms | AUC |",
             "|---|---|---|---|---|---|"]
    for (ways, init, k), v in sorted(acc.items(), key=lambda kv: (kv[0][0], kv[0][1], _k_key(kv[0][2]))):
        a = np.array(v)
        lines.append(f"| {_where(ways)} | {init} | {k} | {np.nanmean(a[:, 0]):.1f} | {1000 * np.nanmean(a[:, 1]):.2f} | {a[:, 2].mean():.2f} |")
    return lines + [""]


def _legend(ax: "object") -> None:
    """A legend where the panel has labelled lines (a panel without a comparison has none, and
    matplotlib would warn "No artists with labels found")."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def save_figure(fig: "object", out: Path, stem: str, ways: str) -> Path:
    """``<stem>_<N>way.png`` (regression: ``<stem>.png``) in ``out``; the figure is closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = out / (f"{stem}_{ways}way.png" if ways not in ("None", "") else f"{stem}.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot(out: Path, study: Study, metric: str) -> list[Path]:
    """``study_<N>.png``: metric vs K with CI bands, and the paired difference vs K, per adaptation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    inits = sorted({i for cell in study.cells.values() for i in cell})
    color = {i: plt.get_cmap("tab10" if len(inits) <= 10 else "tab20")(n) for n, i in enumerate(inits)}  # one per init
    for ways in sorted({w for w, _ in study.cells}):
        keys = [k for k in sorted(study.cells) if k[0] == ways]
        fig, axes = plt.subplots(2, len(keys), figsize=(5 * len(keys), 8), squeeze=False)
        x = np.arange(len(study.shots))
        for j, key in enumerate(keys):
            summ, diffs, ref = study.summary(key), study.differences(key), study.reference
            for init in sorted(summ):
                ks = [i for i, k in enumerate(study.shots) if k in summ[init]]
                r = [summ[init][study.shots[i]] for i in ks]
                axes[0, j].plot(ks, [v.mean for v in r], marker="o", label=init, color=color[init])
                axes[0, j].fill_between(ks, [v.lo for v in r], [v.hi for v in r], alpha=0.15, color=color[init])
            for init in sorted(diffs):
                ks = [i for i, k in enumerate(study.shots) if k in diffs[init]]
                h = [diffs[init][study.shots[i]] for i in ks]
                primary = any(v.primary for v in h)
                axes[1, j].errorbar(ks, [v.mean for v in h], yerr=[[v.mean - v.lo for v in h], [v.hi - v.mean for v in h]],
                                    marker="o", capsize=3, color=color[init], ls="-" if primary else ":",
                                    label=f"{init} ({'primary, Holm' if primary else 'exploratory'})")
            axes[1, j].axhline(0, color="k", lw=0.8)
            for row, title in ((0, f"test {metric} ({'lower' if study.lower else 'higher'} is better)"),
                               (1, f"difference to {ref} (above 0: better)")):
                axes[row, j].set_xticks(x, [f"K={k}" for k in study.shots])
                axes[row, j].set_title(f"{_where(ways)}, {key[1]}: {title}", fontsize=9)
            _legend(axes[0, j])
            _legend(axes[1, j])
        files.append(save_figure(fig, out, "study", ways))
    return files


def finetune_curves(study: Study) -> dict[tuple[str, str, str], dict[str, dict[str, tuple[list[int], list[float], float]]]]:
    """Full fine-tuning's stored curves, ``[(ways, K, init)][seed][fingerprint] = (steps, metric,
    seconds per step)``; a problem on which some init diverged is left out for every init, as in the tables."""
    out: dict = defaultdict(lambda: defaultdict(dict))
    for r in study.rows:
        if r["adaptation"] != "finetune" or not r.get("curve"):
            continue
        if r["fingerprint"] in study.excluded.get((r["ways"], r["shots"], r["adaptation"]), ()):
            continue
        s, v = parse_curve(r["curve"])
        out[r["ways"], r["shots"], r["init"]][r["seed"]][r["fingerprint"]] = (s, v, float(r.get("seconds_per_step") or "nan"))
    return out


def plot_convergence(out: Path, study: Study, metric: str) -> list[Path]:
    """``study_convergence_<N>way.png``: full fine-tuning's mean test metric against the step
    count, a panel per K, a line per init with its crossed (seeds x problems) CI band, from the
    curves stored with each problem's row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves: dict[str, dict[str, dict[str, dict[str, dict[str, list[float]]]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(dict)))  # [ways][K][init][seed] -> {fingerprint: curve}
    steps: dict[tuple[str, str], list[int]] = {}
    for (ways, k, init), per_seed in finetune_curves(study).items():
        for seed, per_problem in per_seed.items():
            for fp, (s, v, _) in per_problem.items():
                steps[ways, k] = s
                curves[ways][k][init].setdefault(seed, {})[fp] = v
    files = []
    inits = sorted({i for cell in study.cells.values() for i in cell})
    color = {i: plt.get_cmap("tab10" if len(inits) <= 10 else "tab20")(n) for n, i in enumerate(inits)}
    for ways, per_k in sorted(curves.items()):
        shots = sorted(per_k, key=_k_key)
        fig, axes = plt.subplots(1, len(shots), figsize=(5 * len(shots), 4), squeeze=False)
        for j, k in enumerate(shots):
            ax, x = axes[0, j], steps[ways, k]
            for init in sorted(per_k[k]):
                by_seed = [v for _, v in sorted(per_k[k][init].items())]
                res = [stats.crossed_t(stats.crossed_matrix([{fp: c[t] for fp, c in s.items()} for s in by_seed]),
                                       1 - study.alpha) for t in range(len(x))]
                ax.plot(x, [r.mean for r in res], label=init, color=color[init])
                ax.fill_between(x, [r.lo for r in res], [r.hi for r in res], alpha=0.15, color=color[init])
            ax.set_xlabel("fine-tuning steps")
            ax.set_title(f"{_where(ways)}, K={k}: test {metric} ({'lower' if study.lower else 'higher'} is better)",
                         fontsize=9)
            _legend(ax)
        files.append(save_figure(fig, out, "study_convergence", ways))
    return files
