"""Paired comparison of meta-checkpoints scored on the same episodes:
``python -m metaft.compare A B [--split val]``.

A and B are run directories (a training run, scored on test, or an ``--config-name eval`` run),
each a comma-separated list for several seeds of the same setting (seed ``s`` of A is paired
with seed ``s`` of B). Every run must hold ``{split}_episodes.csv`` and the same
``{split}_episodes_fingerprint`` in its ``results.json``: the same episodes, so each episode's
difference ``A - B`` removes the episode's own difficulty from the comparison. The interval is
the study's hierarchical percentile bootstrap (seeds, then episodes within a seed); with one
seed per arm it covers the episodes only, not the variation between training runs.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from metaft.study.stats import hierarchical_bootstrap, paired_differences


def load_scores(run: Path, split: str) -> tuple[str, str, dict[str, float]]:
    """(episodes fingerprint, metric name, {episode index: metric}) of one run's ``split`` scores."""
    results, scores = run / "results.json", run / f"{split}_episodes.csv"
    if not results.is_file():
        raise FileNotFoundError(f"{run}: no results.json; give a finished run directory")
    fingerprint = json.loads(results.read_text()).get(f"{split}_episodes_fingerprint")
    if fingerprint is None or not scores.is_file():
        how = "eval_split=val " if split == "val" else ""
        raise FileNotFoundError(
            f"{run}: no {split} per-episode scores ({scores.name} and {split}_episodes_fingerprint); score it with "
            f"`python train.py --config-name eval ckpt_path={run} {how}hydra.run.dir=NEW_DIR` and compare NEW_DIR")
    with scores.open() as f:
        reader = csv.reader(f)
        header = next(reader)
        values = {row[0]: float(row[1]) for row in reader}
    return fingerprint, header[1], values


def compare(a: Sequence[Path], b: Sequence[Path], split: str = "test", n_boot: int = 10_000,
            seed: int = 0) -> dict[str, float | int | str]:
    """Mean metric of each arm and the paired difference ``A - B`` with its 95% CI and p-value."""
    if len(a) != len(b):
        raise ValueError(f"A has {len(a)} runs and B has {len(b)}: give each arm the same seeds, in the same order")
    loaded = {run: load_scores(run, split) for run in [*a, *b]}
    fingerprints = {fp for fp, _, _ in loaded.values()}
    if len(fingerprints) > 1:
        listing = "; ".join(f"{run}: {fp}" for run, (fp, _, _) in loaded.items())
        raise ValueError(f"the runs were scored on different {split} episodes ({listing}), so they cannot be paired; "
                         "score them with the same dataset settings and seed")
    metrics = {m for _, m, _ in loaded.values()}
    if len(metrics) > 1:
        raise ValueError(f"the runs report different metrics ({sorted(metrics)}); compare runs of one task")
    sa, sb = [loaded[r][2] for r in a], [loaded[r][2] for r in b]
    result = hierarchical_bootstrap(paired_differences(sa, sb), n_boot, np.random.default_rng(seed))
    return {
        "metric": metrics.pop(), "split": split, "seeds": len(a), "episodes": len(sa[0]),
        "a": float(np.mean([np.mean(list(s.values())) for s in sa])),
        "b": float(np.mean([np.mean(list(s.values())) for s in sb])),
        "diff": result.mean, "lo": result.lo, "hi": result.hi, "p": result.p,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m metaft.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("a", help="run directory of A (comma-separated: one per seed)")
    parser.add_argument("b", help="run directory of B (comma-separated, seeds in A's order)")
    parser.add_argument("--split", choices=("test", "val"), default="test", help="which per-episode scores")
    parser.add_argument("--boot", type=int, default=10_000, help="bootstrap resamples")
    args = parser.parse_args(argv)
    runs = [[Path(p) for p in arm.split(",") if p] for arm in (args.a, args.b)]
    try:
        r = compare(*runs, split=args.split, n_boot=args.boot)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    m = r["metric"]
    print(f"{r['split']} {m}, {r['episodes']} episodes x {r['seeds']} seed(s): A {r['a']:.2f}, B {r['b']:.2f}")
    print(f"A - B: {r['diff']:+.2f} [{r['lo']:+.2f}, {r['hi']:+.2f}] (95% hierarchical percentile bootstrap over "
          f"seeds and episodes, {args.boot} resamples), p = {r['p']:.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
