"""Stage-1 checkpoints of the study: one training run per (init, seed), each under the same
budget, run side by side as subprocesses of ``train.py``; runs already finished are reused."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig

from metaft.runtime.paths import project_root


def command(cfg: DictConfig, algorithm: str, seed: int, run: Path) -> list[str]:
    """``train.py`` for one stage-1 run of ``algorithm`` (a ``variants`` name expands to its
    algorithm and settings) into ``run``."""
    variant = list(cfg.get("variants", {}).get(algorithm, [algorithm]))
    experiment = cfg.stage1.get("experiment")
    return [sys.executable, str(project_root() / "train.py"), *([f"experiment={experiment}"] if experiment else []),
            f"algorithm={variant[0]}", *cfg.stage1.overrides, *variant[1:], f"seed={seed}", f"hydra.run.dir={run}"]


def checkpoint_of(run: Path) -> Path | None:
    """The run's checkpoint picked by validation (else its last), once the run has finished."""
    if not (run / "results.json").is_file():
        return None
    for name in ("best.ckpt", "last.ckpt"):
        if (run / "checkpoints" / name).is_file():
            return run / "checkpoints" / name
    return None


def run_all(cmds: Sequence[list[str]], logs: Sequence[Path], jobs: int) -> list[int]:
    """Run the commands, ``jobs`` at a time, each logging to its file; their exit codes."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(project_root() / "src"), os.environ.get("PYTHONPATH", "")])}
    codes: list[int] = []
    pending = list(zip(cmds, logs))
    while pending:
        batch, pending = pending[:jobs], pending[jobs:]
        procs = []
        for cmd, log in batch:
            log.parent.mkdir(parents=True, exist_ok=True)
            print("$", " ".join(cmd), flush=True)
            with open(log, "w") as f:
                procs.append(subprocess.Popen(cmd, cwd=project_root(), env=env, stdout=f, stderr=subprocess.STDOUT))
        codes += [p.wait() for p in procs]
    return codes


def train_missing(cfg: DictConfig, out: Path, given: dict[str, list[str]]) -> dict[tuple[str, int], Any]:
    """Every (init, seed)'s checkpoint: given ones, finished runs under ``out/stage1``, and the
    rest trained now. ``None`` for the random init."""
    ckpts: dict[tuple[str, int], Any] = {}
    todo = []
    for init, algorithm in cfg.inits.items():
        for i, seed in enumerate(cfg.stage1.seeds):
            if algorithm is None:
                ckpts[init, seed] = None
            elif init in given:
                ckpts[init, seed] = Path(given[init][i])
            else:
                run = out / "stage1" / f"{init}_seed{seed}"
                ckpt = checkpoint_of(run)
                if ckpt is None:
                    todo.append((init, seed, command(cfg, algorithm, seed, run), run / "stdout.log"))
                ckpts[init, seed] = ckpt or run
    if todo:
        codes = run_all([t[2] for t in todo], [t[3] for t in todo], int(cfg.stage1.jobs))
        failed = [f"{init} seed {seed} (exit {c}; see {log})" for (init, seed, _, log), c in zip(todo, codes) if c]
        if failed:
            raise RuntimeError("stage-1 training failed for " + "; ".join(failed))
        for init, seed, _, _ in todo:
            ckpts[init, seed] = checkpoint_of(out / "stage1" / f"{init}_seed{seed}")
    return ckpts
