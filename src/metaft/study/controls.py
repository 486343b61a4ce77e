"""Controls with known answers, run beside the study and reported in its own section.

``controls.maml_figure3`` (the sinusoid preset): Finn et al. 2017, Figure 3. Both the MAML init
(``meta``) and the pretrained init (``pretrained``, multi-task regression) are fine-tuned on the
study's own test functions at K = ``shots`` support points with plain SGD at the paper's fixed
step size (``lr``, 0.01, its meta-training's inner step), no setting chosen on anything; the test
MSE is read after 0, ``meta_steps`` and ``pretrained_steps`` steps. The paper's pattern: MAML after
1 step is below the pretrained model after 10. It holds when the paired difference (MAML after
``meta_steps`` minus pretrained after ``pretrained_steps``, the same functions and stage-1 seeds)
has its whole crossed seeds x problems interval (``stats.crossed_t``) below 0.

The rows are written to ``DIR/controls/<control>.csv`` beside the settings that made them
(``<control>.json``); a continued study with the same settings reuses them.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

from metaft.core.inner_loop import InnerOptimizer
from metaft.core.objective import Objective
from metaft.runtime.io import atomic_write_text
from metaft.study import problems as P
from metaft.study import stats, targets
from metaft.study.evaluate import Init

FIGURE3 = "maml_figure3"
KNOWN = (FIGURE3,)


@dataclass(frozen=True)
class Figure3:
    """The settings of the MAML paper's Figure 3 control."""

    meta: str
    pretrained: str
    shots: int
    lr: float
    meta_steps: int
    pretrained_steps: int

    @property
    def points(self) -> list[int]:
        """The steps after which the test MSE is read: the start, and both sides of the pattern."""
        return sorted({0, self.meta_steps, self.pretrained_steps})


def settings(cfg: DictConfig) -> Figure3 | None:
    """The Figure 3 control of ``cfg.controls`` checked against the study (``None``: no control);
    an error names the setting, before anything runs."""
    raw = cfg.get("controls")
    if raw is None:
        return None
    given = OmegaConf.to_container(raw)
    if not isinstance(given, dict) or set(given) - set(KNOWN):
        raise ValueError(f"controls: a mapping of {', '.join(KNOWN)} to its settings, got {given!r}")
    c = given.get(FIGURE3)
    if c is None:
        return None
    where = f"controls.{FIGURE3}"
    fields = {"meta", "pretrained", "shots", "lr", "meta_steps", "pretrained_steps"}
    if not isinstance(c, dict) or set(c) != fields:
        raise ValueError(f"{where} must give {', '.join(sorted(fields))}, got {c!r}")
    for key in ("meta", "pretrained"):
        if c[key] not in cfg.inits:
            raise ValueError(f"{where}.{key}={c[key]!r} is not an init of the study ({', '.join(cfg.inits)}); name "
                             "one, or leave the control out with controls=null")
    if str(c["shots"]) not in {str(k) for k in cfg.target.shots}:
        raise ValueError(f"{where}.shots={c['shots']!r} must be one of target.shots ({list(cfg.target.shots)}): the "
                         "control fine-tunes the study's own test functions at that K")
    for key in ("shots", "meta_steps", "pretrained_steps"):
        if isinstance(c[key], bool) or not isinstance(c[key], int) or c[key] < (1 if key == "shots" else 0):
            raise ValueError(f"{where}.{key} must be a whole number >= {1 if key == 'shots' else 0}, got {c[key]!r}")
    if isinstance(c["lr"], bool) or not isinstance(c["lr"], (int, float)) or not c["lr"] > 0:
        raise ValueError(f"{where}.lr must be a step size > 0, got {c['lr']!r}")
    if not Objective(hydra.utils.get_class(cfg.dataset._target_).task).regression:
        raise ValueError(f"{where}: the MAML paper's Figure 3 is sinusoid regression; the study's dataset "
                         f"{cfg.dataset._target_} is not a regression")
    return Figure3(str(c["meta"]), str(c["pretrained"]), int(c["shots"]), float(c["lr"]), int(c["meta_steps"]),
                   int(c["pretrained_steps"]))


def check(cfg: DictConfig) -> None:
    """The controls' settings, before anything runs."""
    settings(cfg)


def curves(init: Init, episode, control: Figure3, cfg: DictConfig, objective: Objective) -> np.ndarray:
    """Test MSE of every problem of ``episode`` after each of ``control.points`` plain SGD steps of
    full fine-tuning at ``control.lr`` (the study's fine-tuning machinery at one fixed point),
    ``[problems, len(points)]``."""
    steps = control.points[-1]
    c = P.finetune_problems(init.net, episode, steps, control.lr, eval_every=1, head_init="keep",
                            bn=cfg.adapt.bn, objective=objective,
                            optimizer=InnerOptimizer("sgd", setting=f"controls.{FIGURE3}"))
    return c.acc[:, [c.steps.index(s) for s in control.points]].double().numpy()


def _column(step: int) -> str:
    return f"mse_{step}"


def run(cfg: DictConfig, out: Path, inits: Mapping[tuple[str, int], Init], objective: Objective) -> Path | None:
    """Run the Figure 3 control on the study's test functions (once: a continued study with the
    same settings reuses its rows); the path of its rows, or ``None`` without a control."""
    control = settings(cfg)
    if control is None:
        return None
    path, saved = out / "controls" / f"{FIGURE3}.csv", out / "controls" / f"{FIGURE3}.json"
    if path.is_file() and saved.is_file() and json.loads(saved.read_text()) == asdict(control):
        return path
    test, _ = targets.Problems(cfg, cfg.target.ways[0], 1, objective.regression).at(control.shots)
    fps = [fp for ep in test for fp in P.problem_fingerprints(ep)]
    rows: list[dict[str, object]] = []
    for (name, seed), init in sorted(inits.items()):
        if name not in (control.meta, control.pretrained):
            continue
        mse = np.concatenate([curves(init, ep, control, cfg, objective) for ep in test])
        for i, (fp, values) in enumerate(zip(fps, mse)):
            rows.append({"init": name, "seed": seed, "problem": i, "fingerprint": fp,
                         **{_column(s): float(v) for s, v in zip(control.points, values)}})
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["init", "seed", "problem", "fingerprint", *map(_column, control.points)])
    w.writeheader()
    w.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, buf.getvalue())
    atomic_write_text(saved, json.dumps(asdict(control)) + "\n")
    print(f"control {FIGURE3}: {control.meta} and {control.pretrained} fine-tuned by SGD at {control.lr:g} on "
          f"{len(fps)} test functions at K={control.shots}", flush=True)
    return path


class Result(NamedTuple):
    """The control's numbers: mean test MSE per (init, steps), and the paired difference of the
    pattern (meta after ``meta_steps`` minus pretrained after ``pretrained_steps``)."""

    means: dict[tuple[str, int], stats.Interval]
    difference: stats.Interval
    reproduced: bool


def by_seed(rows: Sequence[Mapping[str, str]], init: str, step: int) -> list[dict[str, float]]:
    """``{fingerprint: MSE after step}`` per stage-1 seed of ``init``, seeds in increasing order."""
    seeds: dict[int, dict[str, float]] = {}
    for r in rows:
        if r["init"] == init:
            seeds.setdefault(int(r["seed"]), {})[r["fingerprint"]] = float(r[_column(step)])
    if not seeds:
        raise ValueError(f"control {FIGURE3}: no rows of init {init}")
    return [seeds[s] for s in sorted(seeds)]


def verdict(difference: np.ndarray, level: float = 0.95) -> tuple[stats.Interval, bool]:
    """The crossed interval of ``difference [seeds, problems]`` (meta minus pretrained MSE), and
    whether the pattern holds: the whole interval below 0."""
    ci = stats.crossed_t(difference, level)
    return ci, bool(ci.hi < 0)


def result(rows: Sequence[Mapping[str, str]], control: Figure3, level: float = 0.95) -> Result:
    """The control's numbers from its rows."""
    means = {(init, s): stats.crossed_t(stats.crossed_matrix(by_seed(rows, init, s)), level)
             for init in (control.meta, control.pretrained) for s in control.points}
    meta = stats.crossed_matrix(by_seed(rows, control.meta, control.meta_steps))
    pre = stats.crossed_matrix(by_seed(rows, control.pretrained, control.pretrained_steps))
    if meta.shape != pre.shape:
        raise ValueError(f"control {FIGURE3}: {control.meta} has {meta.shape[0]} seeds, {control.pretrained} "
                         f"{pre.shape[0]}; the paired difference needs the same stage-1 seeds")
    ci, ok = verdict(meta - pre, level)  # both in sorted fingerprint order: the same functions
    return Result(means, ci, ok)


def markdown(out: Path, cfg: DictConfig, alpha: float = 0.05) -> list[str]:
    """The report's ``## Controls`` section (empty without a control or its rows)."""
    control = settings(cfg)
    path = out / "controls" / f"{FIGURE3}.csv"
    if control is None or not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    r = result(rows, control, 1 - alpha)
    m, p = control.meta_steps, control.pretrained_steps
    seeds = len({row["seed"] for row in rows})
    problems = len({row["fingerprint"] for row in rows})
    out_lines = ["## Controls", "",
                 f"**The MAML paper's Figure 3** (Finn et al. 2017, sinusoid): the pattern is that {control.meta} "
                 f"after {m} step{'s' if m != 1 else ''} has a lower test MSE than {control.pretrained} (the paper's "
                 f"\"pretrained\") after {p}. Both fine-tuned by plain SGD at the paper's fixed step size "
                 f"{control.lr:g} on K={control.shots} support points of the study's {problems} test functions x "
                 f"{seeds} stage-1 seeds, nothing chosen; mean test MSE with its {100 * (1 - alpha):.0f}% "
                 f"{stats.CROSSED}.", "",
                 "| init | " + " | ".join(f"after {s} step{'s' if s != 1 else ''}" for s in control.points) + " |",
                 "|---|" + "---|" * len(control.points)]
    for init in (control.meta, control.pretrained):
        cells = [f"{c.mean:.3f} [{c.lo:.3f}, {c.hi:.3f}]" for c in (r.means[init, s] for s in control.points)]
        out_lines.append(f"| {init} | " + " | ".join(cells) + " |")
    d = r.difference
    out_lines += ["", f"{control.meta} after {m} minus {control.pretrained} after {p} (paired, the same functions): "
                  f"{d.mean:+.3f} [{d.lo:+.3f}, {d.hi:+.3f}], p = {d.p:.2g}: "
                  + ("**reproduced**." if r.reproduced else
                     "**NOT reproduced** (the interval does not lie below 0).")]
    return out_lines
