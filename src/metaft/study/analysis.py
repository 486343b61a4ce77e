"""The study's report: per (N, adaptation) each init's metric against K with hierarchical
bootstrap CIs, the paired difference to the best pre-trained init (Holm over K, Cohen's d),
fine-tuning convergence, the answer in words, ``study.md`` and plots (also in TensorBoard)."""
from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from metaft.study import stats

FIELDS = ["init", "seed", "ways", "shots", "adaptation", "problem", "fingerprint", "metric", "bn",
          "chosen_step", "chosen_lr", "steps_to_final", "seconds_to_final", "auc", "curve"]


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


class Study:
    """The rows indexed as ``cells[(ways, adaptation)][init][shots][seed] = {fingerprint: metric}``."""

    def __init__(self, rows: list[dict[str, str]], pretrained: list[str], lower_is_better: bool,
                 n_boot: int, alpha: float, seed: int) -> None:
        self.rows, self.pretrained, self.lower = rows, list(pretrained), lower_is_better
        self.n_boot, self.alpha, self.seed = n_boot, alpha, seed
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
            self.cells[r["ways"], r["adaptation"]][r["init"]][r["shots"]].setdefault(r["seed"], {})[r["fingerprint"]] = float(r["metric"])
        self.shots = sorted({r["shots"] for r in rows}, key=_k_key)

    def rng(self) -> np.random.Generator:
        return np.random.default_rng(self.seed)

    def by_seed(self, cell: dict[str, dict[str, float]]) -> list[dict[str, float]]:
        return [cell[s] for s in sorted(cell)]

    def summary(self, key: tuple[str, str]) -> dict[str, dict[str, stats.BootstrapResult]]:
        """Each init's mean metric per K with its hierarchical bootstrap CI."""
        level = 1 - self.alpha
        return {init: {k: stats.hierarchical_bootstrap([list(v.values()) for v in self.by_seed(cell)], self.n_boot,
                                                       self.rng(), level)
                       for k, cell in per_k.items()} for init, per_k in self.cells[key].items()}

    def reference(self, key: tuple[str, str]) -> str | None:
        """The best pre-trained init of this (N, adaptation) by its mean over K."""
        have = [i for i in self.pretrained if i in self.cells[key]]
        if not have:
            return None
        means = {i: np.mean([np.mean(list(v.values())) for per_seed in self.cells[key][i].values()
                             for v in per_seed.values()]) for i in have}
        return (min if self.lower else max)(means, key=means.get)

    def differences(self, key: tuple[str, str]) -> dict[str, dict[str, Any]]:
        """Per init: Holm-corrected paired differences to the reference per K (positive: the
        init is better) and Cohen's d per K."""
        ref = self.reference(key)
        out: dict[str, dict[str, Any]] = {}
        if ref is None:
            return out
        for init, per_k in self.cells[key].items():
            if init == ref:
                continue
            shots = [k for k in per_k if k in self.cells[key][ref]]
            diffs = {}
            for k in shots:
                a, b = self.by_seed(per_k[k]), self.by_seed(self.cells[key][ref][k])
                diffs[k] = stats.paired_differences(b, a) if self.lower else stats.paired_differences(a, b)
            holm = stats.holm_bootstrap(diffs, self.n_boot, self.rng(), self.alpha)
            out[init] = {k: {"holm": holm[k], "d": stats.cohens_d(diffs[k])} for k in shots}
        return out


def answer(study: Study, metric: str, bn: str, meta: list[str]) -> list[str]:
    """One sentence per (N, adaptation): the best meta-learned init against the reference."""
    lines = []
    unit = "points" if metric == "acc" else "MSE"
    for key in sorted(study.cells):
        ways, adaptation = key
        ref, diffs = study.reference(key), study.differences(key)
        cands = {i: d for i, d in diffs.items() if i in meta}
        where = f"{_where(ways)}, {adaptation}"
        if ref is None or not cands:
            lines.append(f"- {where}: no pre-trained reference or no meta-learned init to compare.")
            continue
        best = max(cands, key=lambda i: np.mean([v["holm"].raw.mean for v in cands[i].values()]))
        better, worse, tied = [], [], []
        for k in sorted(cands[best], key=_k_key):
            h = cands[best][k]["holm"]
            text = f"K={k}: {h.raw.mean:+.2f} [{h.lo:+.2f}, {h.hi:+.2f}]"
            (better if h.reject and h.raw.mean > 0 else worse if h.reject else tied).append(text)
        parts = []
        if better:
            parts.append(f"beats it at {'; '.join(better)}")
        if worse:
            parts.append(f"is worse at {'; '.join(worse)}")
        if tied:
            parts.append(f"is not distinguishable from it at {'; '.join(tied)}")
        lines.append(f"- {where}: the best meta-learned init, {best}, against the best pre-trained one, {ref} "
                     f"(difference in {unit}, positive = {best} better, {100 * (1 - study.alpha):.0f}% Holm-corrected "
                     f"hierarchical-bootstrap CI): " + "; it ".join(parts) + ".")
    lines.append("- The best meta-learned init is picked on these same problems, a choice the CIs (corrected over K "
                 "only) do not cover; every init's own difference is in the tables below.")
    return lines


def markdown(study: Study, metric: str, bn: str, meta: list[str], header: list[str]) -> str:
    lines = [*header, "", "## The answer", "", *answer(study, metric, bn, meta), ""]
    if study.excluded:
        lines += ["Problems left out for every init because some init's adaptation diverged on them (a "
                  "non-finite metric): " + "; ".join(f"N={w}, K={k}, {a}: {len(v)}"
                                                    for (w, k, a), v in sorted(study.excluded.items())), ""]
    better = "lower" if study.lower else "higher"
    for key in sorted(study.cells):
        ways, adaptation = key
        summ, diffs, ref = study.summary(key), study.differences(key), study.reference(key)
        lines += [f"## {_where(ways)}, {adaptation}: test {metric} ({better} is better), mean [95% CI]", "",
                  "| init | " + " | ".join(f"K={k}" for k in study.shots) + " |",
                  "|---|" + "---|" * len(study.shots)]
        for init in sorted(summ):
            cells = [f"{summ[init][k].mean:.2f} [{summ[init][k].lo:.2f}, {summ[init][k].hi:.2f}]" if k in summ[init] else "-"
                     for k in study.shots]
            lines.append(f"| {init}{' (reference)' if init == ref else ''} | " + " | ".join(cells) + " |")
        if diffs:
            lines += ["", f"Paired difference to {ref} (positive: better than {ref}), Holm-adjusted p, Cohen's d_z:", "",
                      "| init | " + " | ".join(f"K={k}" for k in study.shots) + " |", "|---|" + "---|" * len(study.shots)]
            for init in sorted(diffs):
                cells = []
                for k in study.shots:
                    if k not in diffs[init]:
                        cells.append("-")
                        continue
                    h, d = diffs[init][k]["holm"], diffs[init][k]["d"]
                    cells.append(f"{h.raw.mean:+.2f} [{h.lo:+.2f}, {h.hi:+.2f}] p={h.p_holm:.3g} d={d:.2f}")
                lines.append(f"| {init} | " + " | ".join(cells) + " |")
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
            summ, diffs, ref = study.summary(key), study.differences(key), study.reference(key)
            for init in sorted(summ):
                ks = [i for i, k in enumerate(study.shots) if k in summ[init]]
                r = [summ[init][study.shots[i]] for i in ks]
                axes[0, j].plot(ks, [v.mean for v in r], marker="o", label=init, color=color[init])
                axes[0, j].fill_between(ks, [v.lo for v in r], [v.hi for v in r], alpha=0.15, color=color[init])
            for init in sorted(diffs):
                ks = [i for i, k in enumerate(study.shots) if k in diffs[init]]
                h = [diffs[init][study.shots[i]]["holm"] for i in ks]
                axes[1, j].errorbar(ks, [v.raw.mean for v in h], yerr=[[v.raw.mean - v.lo for v in h], [v.hi - v.raw.mean for v in h]],
                                    marker="o", capsize=3, label=init, color=color[init])
            axes[1, j].axhline(0, color="k", lw=0.8)
            for row, title in ((0, f"test {metric} ({'lower' if study.lower else 'higher'} is better)"),
                               (1, f"difference to {ref} (above 0: better)")):
                axes[row, j].set_xticks(x, [f"K={k}" for k in study.shots])
                axes[row, j].set_title(f"{_where(ways)}, {key[1]}: {title}", fontsize=9)
            axes[0, j].legend(fontsize=7)
            axes[1, j].legend(fontsize=7)
        fig.tight_layout()
        path = out / f"study_{ways}way.png" if ways not in ("None", "") else out / "study.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        files.append(path)
    return files


def plot_convergence(out: Path, study: Study, metric: str) -> list[Path]:
    """``study_convergence_<N>way.png``: full fine-tuning's mean test metric against the step
    count, a panel per K, a line per init with its hierarchical-bootstrap CI band (seeds, then
    problems), from the curves stored with each problem's row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves: dict[str, dict[str, dict[str, dict[str, list[float]]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(dict)))  # [ways][K][init][seed] -> per-problem curves
    steps: dict[tuple[str, str], list[int]] = {}
    for r in study.rows:
        if r["adaptation"] != "finetune" or not r.get("curve"):
            continue
        s, v = parse_curve(r["curve"])
        steps[r["ways"], r["shots"]] = s
        curves[r["ways"]][r["shots"]][r["init"]].setdefault(r["seed"], []).append(v)
    files = []
    inits = sorted({i for cell in study.cells.values() for i in cell})
    color = {i: plt.get_cmap("tab10" if len(inits) <= 10 else "tab20")(n) for n, i in enumerate(inits)}
    for ways, per_k in sorted(curves.items()):
        shots = sorted(per_k, key=_k_key)
        fig, axes = plt.subplots(1, len(shots), figsize=(5 * len(shots), 4), squeeze=False)
        for j, k in enumerate(shots):
            ax, x = axes[0, j], steps[ways, k]
            for init in sorted(per_k[k]):
                by_seed = [np.array(v, dtype=np.float64) for _, v in sorted(per_k[k][init].items())]
                res = [stats.hierarchical_bootstrap([b[:, t] for b in by_seed], study.n_boot, study.rng(),
                                                    1 - study.alpha) for t in range(len(x))]
                ax.plot(x, [r.mean for r in res], label=init, color=color[init])
                ax.fill_between(x, [r.lo for r in res], [r.hi for r in res], alpha=0.15, color=color[init])
            ax.set_xlabel("fine-tuning steps")
            ax.set_title(f"{_where(ways)}, K={k}: test {metric} ({'lower' if study.lower else 'higher'} is better)",
                         fontsize=9)
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / (f"study_convergence_{ways}way.png" if ways not in ("None", "") else "study_convergence.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        files.append(path)
    return files
