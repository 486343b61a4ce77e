"""Run directories that never collide and never overwrite a finished run.

A Hydra callback (``conf/hydra/default.yaml``), active before Hydra writes anything into the run
or sweep directory:

- a default, time-stamped directory is claimed with an atomic ``mkdir``; when another run started
  in the same second already has it, this run takes ``<name>_1`` (``_2``, ...) instead of sharing it;
- a directory named on the command line (``hydra.run.dir=...``) that already holds a run
  (``results.json`` of a finished run, or checkpoints) is refused, unless the command resumes
  that very run (``ckpt_path=last``, its directory or one of its checkpoints);
- ``hydra.sweep.dir=...`` that already holds a sweep's jobs is refused, unless the sweep continues
  them (``ckpt_path=last``).

A refusal ends the process with the message and exit status 1 (``SystemExit``): Hydra turns a
callback's exceptions into warnings and carries on, which would overwrite the run.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, flag_override

log = logging.getLogger("metaft")


def finished_results(results: Path) -> bool:
    """Whether ``results`` is a results.json of a finished run (not absent, not a failure record,
    which a rerun replaces)."""
    if not results.is_file():
        return False
    try:
        return json.loads(results.read_text()).get("status") != "failed"
    except (OSError, ValueError):
        return True  # unreadable: keep it


def holds_run(d: Path) -> bool:
    """Whether ``d`` holds a run's results or checkpoints."""
    return any((d / "checkpoints").glob("*.ckpt")) or finished_results(d / "results.json")


def claim(d: Path) -> Path:
    """Create ``d`` (or ``d_1``, ``d_2``, ... if taken) atomically and return it."""
    d.parent.mkdir(parents=True, exist_ok=True)
    for i in range(1000):
        candidate = d if i == 0 else d.with_name(f"{d.name}_{i}")
        try:
            os.mkdir(candidate)
            return candidate
        except FileExistsError:
            continue
    raise SystemExit(f"error: could not create a new run directory beside {d}")


def _given(config: DictConfig, key: str) -> bool:
    """Whether ``hydra.<key>`` was set on the command line."""
    return any(o.split("=", 1)[0].lstrip("+~") == f"hydra.{key}" for o in config.hydra.overrides.hydra)


def _resumes(config: DictConfig, d: Path) -> bool:
    """Whether this command continues the run in ``d`` (training or fine-tuning with a
    ``ckpt_path`` of that run; evaluation only reads its checkpoint, so it never does)."""
    ckpt = config.get("ckpt_path")
    if config.get("task_name") == "eval" or ckpt is None:
        return False
    if str(ckpt) == "last":
        return True
    path = Path(str(ckpt)).resolve()
    return path == d.resolve() or d.resolve() in path.parents


def never_started(d: Path, log_name: str) -> bool:
    """Whether ``d`` holds nothing a run wrote beyond Hydra's own files (``.hydra/``, the job's log):
    a run that failed before it trained or tested anything, or wrote anything of its own."""
    for p in d.rglob("*"):
        top = p.relative_to(d).parts[0]
        if p.is_file() and top not in (".hydra", log_name):
            return False
    return True


def user_error(exc: BaseException) -> BaseException | None:
    """The error a person can fix from its message alone (a bad setting or path), unwrapped from
    Hydra's instantiation wrapper; None for anything else (a bug wants its traceback)."""
    from hydra.errors import InstantiationException

    if isinstance(exc, InstantiationException) and exc.__cause__ is not None:
        exc = exc.__cause__
    return exc if isinstance(exc, (ValueError, FileNotFoundError, NotADirectoryError)) else None


class KeepRuns(Callback):
    """See the module docstring."""

    def _claim_run(self, config: DictConfig) -> None:
        d = Path(str(config.hydra.run.dir))
        if _given(config, "run.dir"):
            if d.is_dir() and holds_run(d) and not _resumes(config, d):
                raise SystemExit(
                    f"error: hydra.run.dir={d} already holds a run (results.json or checkpoints), which this command would "
                    "overwrite: choose a new directory (or drop hydra.run.dir for a fresh time-stamped one), or "
                    "continue that run with ckpt_path=last"
                )
            return
        with flag_override(config, ["struct", "readonly"], [False, False]):  # the timestamp resolved once
            OmegaConf.update(config, "hydra.run.dir", str(claim(d)))

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._claim_run(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._claim_sweep(config)
        if "optuna" in str(OmegaConf.select(config, "hydra.sweeper._target_", default="")):
            # Optuna's own handler colours every line, also into files (SLURM logs, redirects):
            # its lines go through Hydra's logging instead, plain.
            import optuna

            optuna.logging.disable_default_handler()
            optuna.logging.enable_propagation()
        log.info(f"sweep directory: {config.hydra.sweep.dir}")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        d = config.hydra.sweep.dir
        log.info(f"sweep finished: {d} (a job per subdirectory; summary: python -m metaft.report {d})")

    def _claim_sweep(self, config: DictConfig) -> None:
        d = Path(str(config.hydra.sweep.dir))
        if _given(config, "sweep.dir"):
            # ckpt_path=last: every job continues its own run in that directory.
            if d.is_dir() and not _resumes(config, d) and any(holds_run(job) for job in d.iterdir() if job.is_dir()):
                raise SystemExit(
                    f"error: hydra.sweep.dir={d} already holds a sweep's runs, which this sweep would overwrite or mix with "
                    "its own: choose a new directory (or drop hydra.sweep.dir for a fresh time-stamped one), or "
                    "continue its jobs with ckpt_path=last"
                )
            return
        claimed = claim(d)
        with flag_override(config, ["struct", "readonly"], [False, False]):
            OmegaConf.update(config, "hydra.sweep.dir", str(claimed))
            # Launchers compose each job's config again from these overrides: without it the jobs
            # would resolve the time stamp afresh, into the directory another sweep has.
            config.hydra.overrides.hydra.append(f"hydra.sweep.dir={claimed}")
