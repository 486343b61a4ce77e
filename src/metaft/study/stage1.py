"""Stage-1 checkpoints of the study: one training run per (init, seed), each under the same
budget, run side by side as subprocesses (``python -m metaft``, the installed command); runs
already finished are reused."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig

from metaft.study import claims

WAIT_S = 30.0  # how often a run another process trains is looked at


def variant(cfg: DictConfig, algorithm: str) -> list[str]:
    """``[algorithm, overrides...]`` of a stage-1 algorithm name (``variants`` expand)."""
    return [str(v) for v in cfg.get("variants", {}).get(algorithm, [algorithm])]


def needs(cfg: DictConfig, algorithm: str) -> list[str]:
    """The inits whose checkpoint (same seed) this one starts from: ``CKPT(<init>)`` in its settings."""
    return [m.group(1) for v in variant(cfg, algorithm) for m in re.finditer(r"CKPT\((\w+)\)", v)]


def command(cfg: DictConfig, algorithm: str, seed: int, run: Path, ckpts: dict[tuple[str, int], Any]) -> list[str]:
    """The ``metaft`` command (``python -m metaft``, the installed entry point, as ``train.py``) for one
    stage-1 run of ``algorithm`` into ``run``; ``CKPT(<init>)`` in its
    settings becomes that init's checkpoint of the same seed (Meta-Baseline's pre-trained body)."""
    variant_ = [re.sub(r"CKPT\((\w+)\)", lambda m: str(ckpts[m.group(1), seed]), v) for v in variant(cfg, algorithm)]
    experiment = cfg.stage1.get("experiment")
    prefix = [str(v) for v in cfg.stage1.get("prefix") or []]  # e.g. srun inside a SLURM allocation
    return [*prefix, sys.executable, "-m", "metaft", *([f"experiment={experiment}"] if experiment else []),
            f"algorithm={variant_[0]}", *cfg.stage1.overrides, *variant_[1:], f"seed={seed}", f"hydra.run.dir={run}"]


def package_parent() -> str:
    """The directory holding the ``metaft`` package this process imported (``python -m metaft`` of a
    stage-1 run finds the same one): ``src`` of a checkout, ``site-packages`` of an install."""
    return str(Path(__file__).resolve().parents[2])  # .../metaft/study/stage1.py


def checkpoint_of(run: Path) -> Path | None:
    """The run's checkpoint picked by validation (else its last), once the run has finished."""
    if not (run / "results.json").is_file():
        return None
    for name in ("best.ckpt", "last.ckpt"):
        if (run / "checkpoints" / name).is_file():
            return run / "checkpoints" / name
    return None


def run_all(cmds: Sequence[list[str]], logs: Sequence[Path], jobs: int) -> list[int]:
    """Run the commands, ``jobs`` at a time, each logging to its file; their exit codes. Each run
    gets the same share of the cores (``OMP_NUM_THREADS``), whether or not another runs beside it:
    the budget is wall time, so a run alone on the machine would otherwise train several times more."""
    # The runs import the metaft this process runs (a checkout's src/, or the installed copy's
    # site-packages) and run in this working directory, as the study does: relative data and run
    # paths mean the same for both, and no checkout is needed.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([package_parent(), os.environ.get("PYTHONPATH", "")])}
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, jobs))))
    codes: list[int | None] = [None] * len(cmds)
    running: dict[int, subprocess.Popen] = {}
    for i, (cmd, log) in enumerate(zip(cmds, logs)):
        while len(running) >= jobs:  # a slot frees when any run ends, not when a whole batch has
            _reap(running, codes)
        log.parent.mkdir(parents=True, exist_ok=True)
        # What the run was given, for the study's table of stage-1 checkpoints (study/training.py).
        (log.parent / "launch.json").write_text(json.dumps({"threads": int(env["OMP_NUM_THREADS"]), "command": cmd}) + "\n")
        print("$", " ".join(cmd), flush=True)
        with open(log, "w") as f:
            running[i] = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
    while running:
        _reap(running, codes)
    return [int(c) for c in codes]


def _reap(running: dict[int, subprocess.Popen], codes: list[int | None]) -> None:
    """Wait until one of the ``running`` processes ends; record its exit code."""
    while True:
        for i, p in list(running.items()):
            if p.poll() is not None:
                codes[i] = p.returncode
                del running[i]
                return
        time.sleep(0.2)


def train_missing(cfg: DictConfig, out: Path, given: dict[str, list[str]]) -> dict[tuple[str, int], Any]:
    """Every (init, seed)'s checkpoint: given ones, finished runs under ``out/stage1``, and the
    rest trained now (an init that starts from another's checkpoint after it). ``None`` for the
    random init."""
    ckpts: dict[tuple[str, int], Any] = {}
    for init in given:  # given checkpoints first: a run that starts from one need not wait for a round
        for i, seed in enumerate(cfg.stage1.seeds):
            ckpts[init, seed] = Path(given[init][i])
    waiting = {i: a for i, a in cfg.inits.items() if i not in given}
    while waiting:
        ready = {i: a for i, a in waiting.items() if a is None or all(d not in waiting for d in needs(cfg, a))}
        if not ready:
            raise ValueError(f"study inits {sorted(waiting)} start from each other's checkpoints (CKPT(...)) in a circle")
        todo = []
        for init, algorithm in ready.items():
            for seed in cfg.stage1.seeds:
                if algorithm is None:
                    ckpts[init, seed] = None
                else:
                    run = out / "stage1" / f"{init}_seed{seed}"
                    ckpts[init, seed] = checkpoint_of(run)
                    if ckpts[init, seed] is None:
                        todo.append((init, seed, command(cfg, algorithm, seed, run, ckpts), run / "stdout.log"))
        if todo:
            # A run another process of this study is training (claims.py) is waited for, not trained twice.
            claim = {(t[0], t[1]): out / "stage1" / f"{t[0]}_seed{t[1]}.claim" for t in todo}
            mine = [t for t in todo if claims.take(claim[t[0], t[1]])]
            try:
                codes = run_all([t[2] for t in mine], [t[3] for t in mine], int(cfg.stage1.jobs))
            finally:
                for t in mine:
                    claims.release(claim[t[0], t[1]])
            failed = [f"{init} seed {seed} (exit {c}; see {log})" for (init, seed, _, log), c in zip(mine, codes) if c]
            if failed:
                raise RuntimeError("stage-1 training failed for " + "; ".join(failed))
            for init, seed, _, log in todo:
                while claims.holder_alive(claim[init, seed]):
                    time.sleep(WAIT_S)
                ckpts[init, seed] = checkpoint_of(out / "stage1" / f"{init}_seed{seed}")
                if ckpts[init, seed] is None:
                    raise RuntimeError(f"stage-1 training of {init} seed {seed} by another process of this study "
                                       f"left no checkpoint; see {log}")
        waiting = {i: a for i, a in waiting.items() if i not in ready}
    return ckpts
