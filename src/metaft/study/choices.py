"""Settings the study chooses on validation problems (problems of the stage-1 validation classes
or functions, never the test problems), once per (init, N, K) for all of the init's stage-1
checkpoints together (the mean over every seed's validation problems), and saved beside the
rows so a continued study reuses them:

- full fine-tuning: the start (``starts``), the optimiser and its step size
  (``adapt.finetune.optimizers``: a list of step sizes per optimiser), and the step count (an
  evaluation point up to ``adapt.finetune.max_steps``); with ``adapt.finetune.augment`` (an
  option, not a grid dimension) every step sees augmented support images (``augment``);
- the probe's regularisation (``adapt.probe.C``, or ``lam`` for regression, when a list);
- the learner's own adaptation, for learners that take gradient steps at test: its test-time
  step size (``eval_inner_lr`` times one of ``adapt.inner_grid.lr_scales``; Meta-SGD keeps its
  learned ones) and step count (0 to ``adapt.inner_grid.max_steps``).

A diverged validation problem (non-finite metric) counts as the worst possible, so a setting that
diverges anywhere is never chosen over one that does not.
"""
from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from metaft.core.inner_loop import OPTIMIZERS, InnerOptimizer
from metaft.core.objective import Objective
from metaft.data.episode import Episode
from metaft.runtime.io import atomic_write_text
from metaft.study import problems as P
from metaft.study.augment import support_augment
from metaft.study.evaluate import Init
from metaft.study.starts import check_head_init


@dataclass(frozen=True)
class Finetune:
    """One point of full fine-tuning's grid, and the evaluation point chosen (``step``)."""

    start: str
    optimizer: str
    lr: float
    step: int = 0
    score: float = float("nan")  # mean validation metric at the choice

    def describe(self) -> str:
        return f"start {self.start}, {self.optimizer} at step size {self.lr:g}, {self.step} steps"


@dataclass(frozen=True)
class Inner:
    """The learner's test-time adaptation: ``lr_scale`` times its ``eval_inner_lr``, ``steps`` steps."""

    lr_scale: float
    steps: int
    score: float = float("nan")

    def describe(self) -> str:
        return f"{self.steps} steps at {self.lr_scale:g} x the learner's step size"


@dataclass(frozen=True)
class Probe:
    """The probe's regularisation: logistic regression's ``C`` or the ridge head's ``lam``."""

    value: float
    score: float = float("nan")

    def describe(self) -> str:
        return f"regularisation {self.value:g}"


def probe_grid(cfg: DictConfig) -> tuple[str, list[float]]:
    """``(key, values)`` of ``adapt.probe``'s regularisation (``C``, or ``lam`` for regression): a
    number, or a list chosen from on validation problems per (init, N, K)."""
    key = "lam" if "lam" in cfg.adapt.probe else "C"
    raw = OmegaConf.to_container(cfg.adapt.probe)[key] if key in cfg.adapt.probe else None
    values = raw if isinstance(raw, list) else [raw]
    if not values or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 for v in values):
        raise ValueError(f"adapt.probe.{key} must be a number > 0 or a list of them (chosen on validation problems), "
                         f"got {raw!r}")
    return key, [float(v) for v in values]


def choose_probe(inits: Sequence[Init], val: list[Episode], cfg: DictConfig, objective: Objective) -> Probe:
    """The regularisation with the best mean validation metric over every init's validation
    problems (a tie: the first listed)."""
    from metaft.study import evaluate

    _, values = probe_grid(cfg)
    if len(values) == 1:
        return Probe(values[0])
    best: Probe | None = None
    for v in values:
        metric = torch.as_tensor(np.concatenate([evaluate.probe(i, ep, cfg, objective, v) for i in inits for ep in val]))
        score = float(_scores(metric[:, None], objective.regression)[0])
        if best is None or score < best.score:
            best = Probe(v, score)
    assert best is not None
    return Probe(best.value, (1.0 if objective.regression else -1.0) * best.score)


def grid(cfg: DictConfig) -> list[Finetune]:
    """Every (start, optimiser, step size) of ``adapt.finetune``, checked, in the config's order
    (optimiser, then start, then step size): a tie goes to the first."""
    ft = cfg.adapt.finetune
    starts = list(ft.starts)
    optimizers = OmegaConf.to_container(ft.optimizers)
    if not starts or not isinstance(optimizers, dict) or not optimizers:
        raise ValueError("adapt.finetune.starts must list starts and adapt.finetune.optimizers must map "
                         f"{' | '.join(OPTIMIZERS)} to step sizes, got {starts!r} and {optimizers!r}")
    for s in starts:
        check_head_init(s, "adapt.finetune.starts")
    out = []
    for name, lrs in optimizers.items():
        if name not in OPTIMIZERS:
            raise ValueError(f"adapt.finetune.optimizers: {name!r} is not an inner optimiser ({', '.join(OPTIMIZERS)})")
        lrs = lrs if isinstance(lrs, list) else [lrs]
        if not lrs or any(isinstance(v, bool) or not float(v) > 0 for v in lrs):
            raise ValueError(f"adapt.finetune.optimizers.{name} must list step sizes > 0, got {lrs!r}")
        out += [Finetune(s, name, float(v)) for s in starts for v in lrs]
    return out


def check(cfg: DictConfig) -> None:
    """Both grids and the augmentation, before anything runs (an error names the setting)."""
    grid(cfg)
    probe_grid(cfg)
    support_augment(cfg.adapt.finetune.get("augment"))
    g = cfg.adapt.get("inner_grid")
    scales = list(g.lr_scales) if g is not None else []
    if g is None or not scales or any(isinstance(v, bool) or not float(v) > 0 for v in scales) \
            or isinstance(g.max_steps, bool) or int(g.max_steps) < 0:
        raise ValueError("adapt.inner_grid must give lr_scales (factors > 0 of each learner's test-time step size) "
                         f"and max_steps >= 0, got {OmegaConf.to_container(g) if g is not None else None!r}")


def optimizer(name: str) -> InnerOptimizer:
    return InnerOptimizer(name, setting="adapt.finetune.optimizers")


def finetune_curves(init: Init, episode: Episode, cfg: DictConfig, objective: Objective, point: Finetune) -> P.Curves:
    ft = cfg.adapt.finetune
    return P.finetune_problems(init.net, episode, int(ft.max_steps), point.lr, int(ft.eval_every),
                               head_init=point.start, bn=cfg.adapt.bn, objective=objective,
                               optimizer=optimizer(point.optimizer), augment=support_augment(ft.get("augment")))


def _scores(metric: Tensor, regression: bool) -> Tensor:
    """Mean validation metric per column, lower is better; a non-finite entry is the worst."""
    metric = metric.double()
    worst = float("inf") if regression else 0.0
    score = torch.where(torch.isfinite(metric), metric, torch.full_like(metric, worst)).mean(0)
    return score if regression else -score


def choose_finetune(inits: Sequence[Init], val: list[Episode], cfg: DictConfig, objective: Objective) -> Finetune:
    """The grid point and step count with the best mean metric over every init's validation problems."""
    best: Finetune | None = None
    for point in grid(cfg):
        curves = [finetune_curves(i, ep, cfg, objective, point) for i in inits for ep in val]
        score = _scores(torch.cat([c.acc for c in curves]), objective.regression)
        j = int(score.argmin())
        if best is None or float(score[j]) < best.score:
            best = Finetune(point.start, point.optimizer, point.lr, curves[0].steps[j], float(score[j]))
    assert best is not None
    sign = 1.0 if objective.regression else -1.0
    return Finetune(best.start, best.optimizer, best.lr, best.step, sign * best.score)


def adapts_at_test(init: Init) -> bool:
    """Whether the init's learner takes gradient steps at test (so has a step size and count to choose)."""
    return init.learner is not None and int(init.learner.eval_inner_steps) > 0


@contextmanager
def scaled_step(init: Init, scale: float) -> Iterator[None]:
    """The learner's test-time step size times ``scale`` (learned step sizes are left alone)."""
    learner = init.learner
    before = learner.eval_inner_lr
    if learner.inner_lrs is None:
        learner.eval_inner_lr = before * scale
    try:
        yield
    finally:
        learner.eval_inner_lr = before


def choose_inner(inits: Sequence[Init], val: list[Episode], cfg: DictConfig, objective: Objective) -> Inner:
    """The step size scale and step count with the best mean validation metric; on a tie the
    learner's own setting (scale 1, its ``eval_inner_steps``) stays."""
    g = cfg.adapt.inner_grid
    own = int(inits[0].learner.eval_inner_steps)
    steps = max(int(g.max_steps), own)
    scales = [1.0] + [float(s) for s in g.lr_scales if float(s) != 1.0]
    if inits[0].learner.inner_lrs is not None:
        scales = [1.0]  # Meta-SGD: its learned step sizes, only the count is chosen
    best: Inner | None = None
    for scale in scales:
        parts = []
        for init in inits:
            with scaled_step(init, scale):
                parts += [init.learner.adaptation_curve(ep, steps)[0] for ep in val]
        score = _scores(torch.cat(parts), objective.regression)
        if best is None:
            best = Inner(1.0, own, float(score[own]))
        j = int(score.argmin())
        if float(score[j]) < best.score:
            best = Inner(scale, j, float(score[j]))
    assert best is not None
    sign = 1.0 if objective.regression else -1.0
    return Inner(best.lr_scale, best.steps, sign * best.score)


def inner(init: Init, episode: Episode, choice: Inner) -> np.ndarray:
    """The learner's own adaptation of ``episode`` at the chosen setting: the metric per problem."""
    with scaled_step(init, choice.lr_scale):
        metric, _ = init.learner.adaptation_curve(episode, choice.steps)
    return metric[:, -1].double().numpy()


def cached(path: Path, kind: type, compute: Callable[[], object]) -> object:
    """``kind`` read from ``path`` if a continued study chose it already, else computed and saved."""
    if path.is_file():
        return kind(**json.loads(path.read_text()))
    value = compute()
    atomic_write_text(path, json.dumps(asdict(value)) + "\n")
    return value


class Chooser:
    """The settings chosen on validation problems for one (N, K), once per (init, adaptation) for
    all of the init's stage-1 seeds together (``choices``), saved in the piece's folder."""

    def __init__(self, inits: dict, val: list | dict[str, list], cfg: DictConfig, objective: Objective, piece: Path,
                 label: str) -> None:
        # ``val``: the validation problems, or {"probe": ..., "other": ...} when the probe has its own
        self.inits, self.cfg, self.objective, self.piece, self.label = inits, cfg, objective, piece, label
        self.vals = val if isinstance(val, dict) else {"probe": val, "other": val}

    def __call__(self, init: str, adaptation: str) -> Finetune | Inner | Probe:
        group = [v for (name, _), v in sorted(self.inits.items()) if name == init]
        pick, kind = {"finetune": (choose_finetune, Finetune), "inner": (choose_inner, Inner),
                      "probe": (choose_probe, Probe)}[adaptation]
        path = self.piece / f"{init}_{adaptation}_choice.json"
        began, fresh = time.perf_counter(), not path.is_file()
        val = self.vals["probe" if adaptation == "probe" else "other"]
        chosen = cached(path, kind, lambda: pick(group, val, self.cfg, self.objective))
        if fresh:
            print(f"{self.label} {init} {adaptation}: {chosen.describe()}, chosen on {sum(ep.num_tasks for ep in val)} "
                  f"validation problems x {len(group)} seeds in {time.perf_counter() - began:.1f}s", flush=True)
        return chosen


def table(rows: list[dict[str, str]]) -> list[str]:
    """Markdown: the settings chosen on validation problems per (N, adaptation, init, K), read
    back from the rows (one value per cell: chosen once for all seeds)."""
    chosen: dict[tuple[str, str, str, str], str] = {}
    for r in rows:
        if r["adaptation"] == "finetune" and r.get("chosen_start"):
            text = f"{r['chosen_start']}, {r['chosen_optimizer']} {float(r['chosen_lr']):g}, {r['chosen_step']} steps"
        elif r["adaptation"] == "inner" and r.get("chosen_step"):
            text = f"step size {float(r['chosen_lr']):.3g}, {r['chosen_step']} steps"
        elif r["adaptation"] == "probe" and r.get("chosen_reg"):
            text = f"regularisation {float(r['chosen_reg']):g}"
        else:
            continue
        chosen[r["ways"], r["adaptation"], r["init"], r["shots"]] = text
    if not chosen:
        return []
    out = ["## Settings chosen on validation problems", "",
           "Full fine-tuning: start, optimiser and step size, steps; the learners' own adaptation: test-time step "
           "size and steps; the probe: its regularisation (C, or the ridge's lambda). Chosen per (init, N, K) for all of an init's seeds, never on the test problems.", "",
           "| N | adaptation | init | K | chosen |", "|---|---|---|---|---|"]
    for (ways, adaptation, init, shots), text in sorted(chosen.items(), key=lambda kv: (*kv[0][:3], _k(kv[0][3]))):
        out.append(f"| {'regression' if ways in ('None', '') else ways} | {adaptation} | {init} | {shots} | {text} |")
    return out


def _k(shots: str) -> tuple[int, float]:
    return (1, 0.0) if shots == "all" else (0, float(shots))

