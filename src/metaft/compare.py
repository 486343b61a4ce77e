"""Paired comparison of meta-checkpoints scored on the same episodes:
``python -m metaft.compare A B [--split val]``.

A and B are run directories (a training run, scored on test, or an ``--config-name eval`` run),
each a comma-separated list for several seeds of the same setting: seed ``s`` of A is paired with
seed ``s`` of B (list them in the same seed order). Every run must hold ``{split}_episodes.csv``
and its ``{split}_episodes_fingerprint`` in ``results.json``, and the two runs of a pair must share
their fingerprint: the same episodes, so each episode's difference ``A - B`` removes the episode's
own difficulty from the comparison. The interval follows the design:

- each pair on its own episodes (a sweep's seeds: the episodes depend on the seed), nested: a t
  interval on the pairs' mean differences (``stats.nested_t``, seeds - 1 df);
- every pair on one episode set (e.g. eval runs with one ``dataset.seed``), crossed: the study's
  two-way interval over seeds and episodes (``stats.crossed_t``);
- one pair: a t interval over its episodes, which covers the episodes, not the spread between
  training runs (said in the output).
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from metaft.study.stats import crossed_matrix, crossed_t, nested_t, paired_differences


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


def _check_pairs(a: Sequence[Path], b: Sequence[Path], fingerprint: dict[Path, str], split: str) -> None:
    """Each pair (seed s of A, seed s of B) must have been scored on the same episodes."""
    bad = [(s, ra, rb) for s, (ra, rb) in enumerate(zip(a, b)) if fingerprint[ra] != fingerprint[rb]]
    if not bad:
        return
    lines = []
    for s, ra, rb in bad:
        line = (f"pair {s + 1}: {ra} ({split} episodes {fingerprint[ra]}) and {rb} ({fingerprint[rb]}) were scored on "
                f"different {split} episodes")
        same = [str(r) for r in b if fingerprint[r] == fingerprint[ra]]
        line += (f"; {', '.join(same)} of B has {ra}'s episodes: list B's runs in A's seed order" if same else
                 "; score both with the same dataset settings and seed")
        lines.append(line)
    raise ValueError("runs of a pair must share their episodes, so they cannot be paired:\n  " + "\n  ".join(lines))


def compare(a: Sequence[Path], b: Sequence[Path], split: str = "test") -> dict[str, Any]:
    """Mean metric of each arm and the paired difference ``A - B`` with its 95% CI and p-value,
    seed ``s`` of A paired with seed ``s`` of B; the interval's design and method are returned too."""
    if len(a) != len(b):
        raise ValueError(f"A has {len(a)} runs and B has {len(b)}: give each arm the same seeds, in the same order")
    if not a:
        raise ValueError("no runs given: write A and B as run directories (comma-separated, one per seed)")
    loaded = {run: load_scores(run, split) for run in [*a, *b]}
    metrics = {m for _, m, _ in loaded.values()}
    if len(metrics) > 1:
        raise ValueError(f"the runs report different metrics ({sorted(metrics)}); compare runs of one task")
    fingerprint = {run: fp for run, (fp, _, _) in loaded.items()}
    _check_pairs(a, b, fingerprint, split)
    sa, sb = [loaded[r][2] for r in a], [loaded[r][2] for r in b]
    diffs = paired_differences(sa, sb)  # per pair, in sorted episode order; refuses unmatched episodes
    episode_sets = [fingerprint[r] for r in a]
    if len(a) == 1:
        design = "one pair"
        result = nested_t(diffs)  # a t over the episodes, labelled as blind to the spread between runs
    elif len(set(episode_sets)) == 1:
        design = "crossed"
        keys = [sorted(s) for s in sa]
        result = crossed_t(crossed_matrix([dict(zip(k, d)) for k, d in zip(keys, diffs)]))
    elif len(set(episode_sets)) == len(episode_sets):
        design = "nested"
        result = nested_t(diffs)
    else:
        shared = sorted({fp for fp in episode_sets if episode_sets.count(fp) > 1})
        raise ValueError(f"some pairs share their {split} episodes ({', '.join(shared)}) and others do not: give pairs "
                         "that are all scored on one episode set (crossed) or each on its own (nested), e.g. one "
                         "run per seed")
    return {
        "metric": metrics.pop(), "split": split, "seeds": len(a), "episodes": len(sa[0]), "design": design,
        "method": result.method,
        "a": float(np.mean([np.mean(list(s.values())) for s in sa])),
        "b": float(np.mean([np.mean(list(s.values())) for s in sb])),
        "pairs": [{"a": str(ra), "b": str(rb), "episodes": fingerprint[ra], "diff": float(d.mean())}
                  for ra, rb, d in zip(a, b, diffs)],
        "diff": result.mean, "lo": result.lo, "hi": result.hi, "p": result.p,
    }


DESIGNS = {"one pair": "one pair of runs", "crossed": "every pair on the same episodes (crossed)",
           "nested": "each pair on its own episodes (nested)"}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m metaft.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("a", help="run directory of A (comma-separated: one per seed)")
    parser.add_argument("b", help="run directory of B (comma-separated, seeds in A's order)")
    parser.add_argument("--split", choices=("test", "val"), default="test", help="which per-episode scores")
    args = parser.parse_args(argv)
    runs = [[Path(p) for p in arm.split(",") if p] for arm in (args.a, args.b)]
    try:
        r = compare(*runs, split=args.split)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    m = r["metric"]
    print(f"{r['split']} {m}, {r['episodes']} episodes x {r['seeds']} seed pair(s), {DESIGNS[r['design']]}: "
          f"A {r['a']:.4g}, B {r['b']:.4g}")
    if r["seeds"] > 1:
        for i, pair in enumerate(r["pairs"], start=1):
            print(f"  pair {i}: {pair['a']} - {pair['b']}: {pair['diff']:+.4g} ({r['split']} episodes {pair['episodes']})")
    print(f"A - B: {r['diff']:+.4g} [{r['lo']:+.4g}, {r['hi']:+.4g}] (95% {r['method']}), p = {r['p']:.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
