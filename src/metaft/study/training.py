"""What each stage-1 checkpoint of the study cost and whether it converged: steps, training
examples, wall time and threads, its validation history (from the run's TensorBoard scalars), and
the stated criterion: the last two validations scored at least ``val_episodes`` episodes each and
differ by less than the last one's 95% interval. A run that misses it is *not converged* wherever
its numbers appear; a budget arm (``<init>@<budget>``) is never in the converged column."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, NamedTuple

from omegaconf import OmegaConf

from metaft.study import budgets, stage1

RECORD = "stage1.json"  # in the study directory: (init, seed) -> checkpoint
LAUNCH = "launch.json"  # in a stage-1 run directory: the threads and command it was launched with


class Checkpoint(NamedTuple):
    init: str
    seed: int
    steps: int | None
    examples: int | None
    seconds: float | None
    threads: int | None
    val: list[tuple[int, float, float, float]]  # (step, metric, 95% half-width, episodes)
    converged: bool
    why: str


def validation_history(run: Path) -> tuple[list[tuple[int, float, float, float]], float | None]:
    """``[(step, metric, ci95, episodes)]`` of every validation the run logged, and its wall time
    (first to last TensorBoard event, seconds)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = run / "tensorboard"
    if not tb.is_dir():
        return [], None
    ea = EventAccumulator(str(tb), size_guidance={"scalars": 0})
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    metric = next((m for m in ("acc", "mse") if f"val/{m}" in tags), None)
    times = [e.wall_time for t in tags for e in ea.Scalars(t)]
    seconds = max(times) - min(times) if times else None
    if metric is None:
        return [], seconds

    def by_step(tag: str) -> dict[int, float]:
        return {e.step: e.value for e in ea.Scalars(tag)} if tag in tags else {}

    value, ci, n = by_step(f"val/{metric}"), by_step(f"val/{metric}_ci95"), by_step("val/episodes")
    return [(s, value[s], ci.get(s, float("nan")), n.get(s, float("nan"))) for s in sorted(value)], seconds


def criterion(val: list[tuple[int, float, float, float]], episodes: int, budget_arm: bool) -> tuple[bool, str]:
    """(converged, why) by the study's stated criterion."""
    if budget_arm:
        return False, "budget arm (trained to a smaller budget, not to convergence)"
    if len(val) < 2:
        return False, f"{len(val)} validation(s); the criterion needs the last two"
    (s0, a0, _, _), (s1, a1, h1, n1) = val[-2], val[-1]
    if not n1 >= episodes:
        return False, f"last validation on {n1:g} episodes (fewer than {episodes})"
    if not abs(a1 - a0) < h1:  # a missing interval (NaN) is not a pass
        return False, f"last two validations (steps {s0}, {s1}) differ by {abs(a1 - a0):.2f}, not within +-{h1:.2f}"
    return True, f"steps {s0} and {s1}: {a0:.2f} and {a1:.2f}, within +-{h1:.2f}"


def describe_run(init: str, seed: int, ckpt: Path | None, episodes: int) -> Checkpoint:
    """The row of one stage-1 checkpoint (the random init: no row values)."""
    if ckpt is None:
        return Checkpoint(init, seed, None, None, None, None, [], False, "random init: no stage 1")
    run = Path(ckpt).parent.parent
    steps = examples = threads = None
    saved = run / ".hydra" / "config.yaml"
    if saved.is_file():
        cfg = OmegaConf.load(saved)
        try:
            steps, examples = int(cfg.trainer.max_steps), int(cfg.trainer.max_steps) * budgets.examples_per_step(cfg)
        except Exception:  # a config this version cannot read: the row says so by its blanks
            pass
    launch = run / LAUNCH
    if launch.is_file():
        threads = json.loads(launch.read_text()).get("threads")
    val, seconds = validation_history(run)
    ok, why = criterion(val, episodes, budgets.split(init)[1] is not None)
    return Checkpoint(init, seed, steps, examples, seconds, threads, val, ok, why)


def record(out: Path, ckpts: Mapping[tuple[str, int], Any]) -> None:
    """Save which checkpoint each (init, seed) used, for the report."""
    data = {f"{i}/{s}": (None if c is None else str(Path(c).resolve())) for (i, s), c in ckpts.items()}
    (out / RECORD).write_text(json.dumps(data, indent=1) + "\n")


def load(out: Path) -> dict[tuple[str, int], Path | None]:
    path = out / RECORD
    if not path.is_file():
        return {}
    return {(k.rsplit("/", 1)[0], int(k.rsplit("/", 1)[1])): (None if v is None else Path(v))
            for k, v in json.loads(path.read_text()).items()}


def table(out: Path, episodes: int, cfg: Any = None) -> tuple[list[str], dict[str, bool], dict[str, float]]:
    """The markdown table of every stage-1 checkpoint; per init whether all its seeds converged,
    and its training examples (mean over seeds). With the study's ``cfg``, an init built on another's
    checkpoint (Meta-Baseline on pre-training) counts that run's examples too: its budget is the sum."""
    rows = [describe_run(i, s, c, episodes) for (i, s), c in sorted(load(out).items())]
    rows = [r for r in rows if r.steps is not None or r.val]
    if cfg is not None:
        by = {(r.init, r.seed): r for r in rows}
        for n, r in enumerate(rows):
            algorithm = cfg.inits.get(r.init)
            before = [by.get((d, r.seed)) for d in (stage1.needs(cfg, algorithm) if algorithm else [])]
            if before and r.examples is not None and all(b is not None and b.examples is not None for b in before):
                rows[n] = r._replace(examples=r.examples + sum(b.examples for b in before))
    if not rows:
        return [], {}, {}
    lines = ["## Stage 1: the checkpoints", "",
             f"Converged: the last two validations, each on at least {episodes} episodes, differ by less than the "
             "last one's 95% interval: a plateau at the end of the schedule (with a learning rate decaying to 0 the "
             "last two are close by design), not proof that more training would not help. Examples: the training "
             "images (or points) the run processed, support and query examples of every meta-step or the batches of "
             "pre-training (an init built on another's checkpoint: both stages). Wall time: first to last logged "
             "event of the run, on the threads it was given.", "",
             "| init | seed | steps | examples | wall (min) | threads | last validations | converged |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        vals = "; ".join(f"{s}: {a:.2f} +- {h:.2f}" for s, a, h, _ in r.val[-2:]) or "-"
        wall = f"{r.seconds / 60:.1f}" if r.seconds is not None else "-"
        lines.append(f"| {r.init} | {r.seed} | {r.steps if r.steps is not None else '-'} | "
                     f"{f'{r.examples:,}' if r.examples is not None else '-'} | {wall} | {r.threads or '-'} | {vals} | "
                     f"{'yes' if r.converged else 'NO'}: {r.why} |")
    status: dict[str, bool] = {}
    examples: dict[str, list[int]] = {}
    for r in rows:
        status[r.init] = status.get(r.init, True) and r.converged
        if r.examples is not None:
            examples.setdefault(r.init, []).append(r.examples)
    return lines + [""], status, {i: sum(v) / len(v) for i, v in examples.items()}
