"""Summarise finished runs: ``python -m metaft.report PATH [--metric test/acc] [--out DIR]``.

PATH is a run directory, a sweep directory (``outputs/multirun/<date>/<time>``) or any folder
above them; every ``results.json`` below it is one run. Runs are grouped by their overrides
minus ``seed`` (and minus Hydra's own ``hydra.*`` / ``hydra/*`` ones), so a group is one
configuration over several seeds. Prints a markdown report and writes ``report.md``,
``report_runs.csv``, ``report_groups.csv`` and ``report.png`` (the comparison plot).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from metaft.core.metrics import mean_ci95, t975  # noqa: F401 (t975: re-exported)

_IGNORED_KEYS = ("seed",)
_SKIPPED = re.compile(r"(_ci95|_step\d+)$|/(episodes|loss)$")


@dataclass
class Run:
    dir: str
    overrides: list[str]
    metrics: dict[str, float]
    status: str = "ok"
    error: str = ""
    config: list[str] = field(init=False)  # the overrides that define its group
    seed: str = field(init=False)
    group: str = ""  # set by group_runs

    def __post_init__(self) -> None:
        self.config, self.seed = [], ""
        for o in self.overrides:
            key, _, value = o.lstrip("+~").partition("=")
            if key in _IGNORED_KEYS:
                self.seed = value
            elif not key.startswith(("hydra.", "hydra/")):
                self.config.append(o)


def common_overrides(runs: Sequence[Run]) -> list[str]:
    """Overrides every run shares (shown once, left out of the group names)."""
    if not runs:
        return []
    shared = set(runs[0].config).intersection(*(r.config for r in runs[1:]))
    return [o for o in runs[0].config if o in shared]


def load_runs(root: Path) -> list[Run]:
    """Every ``results.json`` under ``root`` (hidden folders such as ``.submitit`` skipped)."""
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such run or sweep directory")
    files = [root / "results.json"] if (root / "results.json").is_file() else sorted(
        p for p in root.rglob("results.json") if not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not files:
        raise FileNotFoundError(
            f"no results.json under {root}; give a run directory (outputs/train/runs/...) or a sweep "
            "directory (outputs/multirun/<date>/<time>)"
        )
    runs = []
    for f in files:
        data = json.loads(f.read_text())
        metrics = {k: float(v) for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        rel = f.parent.relative_to(root).as_posix() if f.parent != root else "."
        runs.append(Run(rel, [str(o) for o in data.get("overrides", [])], metrics,
                        str(data.get("status", "ok")), str(data.get("error", ""))))
    return runs


def headline_metrics(runs: Sequence[Run]) -> list[str]:
    """Final metrics worth a column: ``val/*`` and ``test/*`` without per-step, CI, loss and
    episode-count entries; test first."""
    keys = {k for r in runs for k in r.metrics if k.startswith(("test/", "val/")) and not _SKIPPED.search(k)}
    return sorted(keys, key=lambda k: (not k.startswith("test/"), k))


def higher_is_better(metric: str) -> bool:
    return "acc" in metric.rsplit("/", 1)[-1]


def default_metric(metrics: Sequence[str]) -> str | None:
    for m in ("test/acc", "test/mse", "val/acc", "val/mse"):
        if m in metrics:
            return m
    return metrics[0] if metrics else None


@dataclass
class Group:
    name: str
    runs: list[Run]
    stats: dict[str, tuple[float, float]]  # metric -> (mean, ci95) over the ok runs

    @property
    def n(self) -> int:
        return sum(r.status == "ok" for r in self.runs)

    @property
    def failed(self) -> int:
        return len(self.runs) - self.n


def group_runs(runs: Sequence[Run], metrics: Sequence[str], sort_by: str | None) -> list[Group]:
    """One group per set of overrides (order-insensitive, seed excluded), named by what differs
    from the other groups; sorted best first by ``sort_by`` (groups without a value last)."""
    common = set(common_overrides(runs))
    by_key: dict[tuple[str, ...], list[Run]] = {}
    for r in runs:
        by_key.setdefault(tuple(sorted(set(r.config) - common)), []).append(r)
    groups = []
    for members in by_key.values():
        name = " ".join(o for o in members[0].config if o not in common) or "(all runs)"
        for r in members:
            r.group = name
        ok = [r for r in members if r.status == "ok"]
        stats = {m: mean_ci95([r.metrics[m] for r in ok if m in r.metrics]) for m in metrics}
        groups.append(Group(name, members, stats))
    if sort_by:
        sign = -1.0 if higher_is_better(sort_by) else 1.0

        def best_first(g: Group) -> tuple[bool, float]:
            m = g.stats[sort_by][0]
            return (math.isnan(m), 0.0 if math.isnan(m) else sign * m)

        groups.sort(key=best_first)  # stable: ties keep first-seen order
    return groups


def fmt(value: float, ci: float | None = None) -> str:
    if value is None or math.isnan(value):
        return "-"
    text = f"{value:.4g}"
    if ci is not None and not math.isnan(ci):
        text += f" ± {ci:.4g}"
    return text


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def render(root: Path, runs: Sequence[Run], groups: Sequence[Group], metrics: Sequence[str], sort_by: str | None) -> str:
    g_rows = [[g.name, str(g.n), str(g.failed), *(fmt(*g.stats[m]) for m in metrics)] for g in groups]
    order = {g.name: i for i, g in enumerate(groups)}
    run_rows = []
    for r in sorted(runs, key=lambda r: (order[r.group], r.seed, r.dir)):
        cells = [fmt(r.metrics.get(m, math.nan), r.metrics.get(f"{m}_ci95")) for m in metrics]
        run_rows.append([r.dir, r.group, r.seed or "-", r.status if r.status == "ok" else f"{r.status}: {r.error}", *cells])
    sort_note = f", sorted by {sort_by} ({'higher' if higher_is_better(sort_by) else 'lower'} is better)" if sort_by else ""
    common = " ".join(f"`{o}`" for o in common_overrides(runs)) or "none"
    return "\n\n".join([
        f"# Report: {root}",
        f"{_count(len(runs), 'run')} ({sum(r.status != 'ok' for r in runs)} failed) in {_count(len(groups), 'group')}"
        f"{sort_note}. "
        f"Overrides common to all runs: {common}.",
        "## Groups (mean ± 95% CI across seeds)",
        "± is the 95% confidence interval of the mean over a group's successful runs (seeds): "
        f"{t_note(groups)}; none for a single seed. Failed runs are counted, not averaged.",
        markdown_table(["group", "n", "failed", *metrics], g_rows),
        "## Runs",
        "± is the run's own 95% CI over its evaluation episodes.",
        markdown_table(["run", "group", "seed", "status", *metrics], run_rows),
    ]) + "\n"


def t_note(groups: Sequence[Group]) -> str:
    """How the groups' intervals were made, with the t values of the seed counts they have."""
    counts = sorted({g.n for g in groups if g.n >= 2})
    if not counts:
        return "Student's t with n-1 degrees of freedom, but no group has two successful seeds"
    values = ", ".join(f"t = {t975(n - 1):.2f} for {n} seeds" for n in counts)
    return f"Student's t with n-1 degrees of freedom, since seeds are few ({values}, not 1.96)"


def write_csvs(out: Path, runs: Sequence[Run], groups: Sequence[Group], metrics: Sequence[str]) -> None:
    with open(out / "report_groups.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["group", "n", "failed", *(f"{m}{s}" for m in metrics for s in ("_mean", "_ci95"))])
        for g in groups:
            w.writerow([g.name, g.n, g.failed, *(v for m in metrics for v in g.stats[m])])
    with open(out / "report_runs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "group", "seed", "status", "error", *metrics])
        for r in runs:
            w.writerow([r.dir, r.group, r.seed, r.status, r.error, *(r.metrics.get(m, "") for m in metrics)])


_NUMBER = re.compile(r"-?\d+\.\d+(?:[eE][-+]?\d+)?|-?\d+[eE][-+]?\d+")


def short_value(value: str) -> str:
    """Decimal numbers in an override's value to 4 significant digits (Optuna writes 17)."""
    return _NUMBER.sub(lambda m: f"{float(m.group()):.4g}", value)


def short_labels(names: Sequence[str]) -> list[str]:
    """Group names for a plot: each ``key=value`` with its key's last part (the full key where
    two keys share that part) and its numbers rounded."""
    overrides = [n.split() for n in names]
    keys = {o.partition("=")[0] for os_ in overrides for o in os_ if "=" in o}
    leaf = {k: k.rsplit(".", 1)[-1] for k in keys}
    clash = {v for v in leaf.values() if list(leaf.values()).count(v) > 1}
    labels = []
    for os_ in overrides:
        parts = []
        for o in os_:
            key, eq, value = o.partition("=")
            name = leaf[key] if eq and leaf[key] not in clash else key
            parts.append(f"{name}={short_value(value)}" if eq else o)
        labels.append(" ".join(parts))
    return labels


def figure(groups: Sequence[Group], metric: str, title: str = "") -> object:
    """The comparison plot: one row per group, the mean with its 95% CI where a group has more
    than one run, each seed as a dot; the axis says which way is better."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on clusters and CI
    import matplotlib.pyplot as plt

    shown = [g for g in groups if not math.isnan(g.stats[metric][0])]
    labels = short_labels([g.name for g in shown])
    fig, ax = plt.subplots(figsize=(7.5, 1.6 + 0.45 * max(len(shown), 1)))
    labelled: set[str] = set()
    for y, g in enumerate(shown):
        m, ci = g.stats[metric]
        if math.isnan(ci):  # a single run: no interval to draw
            kind = "mean of one run (no CI)"
            ax.plot([m], [y], "o", mfc="none", color="C0", label=None if kind in labelled else kind)
        else:
            kind = "mean ± 95% CI over seeds"
            ax.errorbar([m], [y], xerr=[[ci]], fmt="o", color="C0", capsize=4, label=None if kind in labelled else kind)
        labelled.add(kind)
        seeds = [r.metrics[metric] for r in g.runs if r.status == "ok" and metric in r.metrics]
        ax.scatter(seeds, [y] * len(seeds), s=12, color="C1", zorder=3, label=None if "seed" in labelled else "seed")
        labelled.add("seed")
    # Wrapped at spaces only: never inside a number.
    ax.set_yticks(range(len(shown)), [textwrap.fill(lb, 45, break_long_words=False, break_on_hyphens=False)
                                      for lb in labels], fontsize=8)
    ax.invert_yaxis()  # best first, from the top
    better = "higher" if higher_is_better(metric) else "lower"
    ax.set_xlabel(f"{metric} ({better} is better; best group at the top)")
    ax.set_title(title or f"{metric} by group", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    if shown:
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return fig


def plot(path: Path, groups: Sequence[Group], metric: str, title: str = "") -> None:
    """Write ``figure`` to ``path``."""
    import matplotlib.pyplot as plt

    fig = figure(groups, metric, title)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(root: str | Path, out: str | Path | None = None, metric: str | None = None) -> str:
    """Build the report for ``root``; write it to ``out`` (default ``root``); return the markdown."""
    root = Path(root)
    runs = load_runs(root)
    metrics = headline_metrics(runs)
    if metric is not None and metric not in metrics:
        raise ValueError(f"--metric {metric} is not among the runs' metrics: {', '.join(metrics) or 'none'}")
    sort_by = metric or default_metric(metrics)
    groups = group_runs(runs, metrics, sort_by)
    text = render(root, runs, groups, metrics, sort_by)
    out = Path(out) if out is not None else root
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(text)
    write_csvs(out, runs, groups, metrics)
    if sort_by:
        ok = sum(r.status == "ok" for r in runs)
        plot(out / "report.png", groups, sort_by,
             f"{root.resolve().name}: {sort_by}, {_count(ok, 'run')} in {_count(len(groups), 'group')}")
    return text


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m metaft.report", description=__doc__.split("\n\n")[0])
    p.add_argument("path", help="a run directory, a sweep directory, or a folder above them")
    p.add_argument("--metric", help="sort and plot by this metric (default: test/acc, test/mse, val/acc or val/mse)")
    p.add_argument("--out", help="where to write report.md, the CSVs and report.png (default: PATH)")
    args = p.parse_args(argv)
    try:
        print(report(args.path, args.out, args.metric), end="")
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
