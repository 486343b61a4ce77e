"""Progress display: Lightning's bar on a terminal, plain log lines everywhere else.

A progress bar written to a file (CI logs, SLURM's ``slurm-*.out``) is a wall of control
characters or one line at the very end; periodic log lines read well in both.
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)

MODES = ("auto", "bar", "log")


class ProgressLog(Callback):
    """Every ``every_n_steps`` meta-steps (and at the last one) logs the step, the training
    throughput in tasks/s since the previous line (validation time excluded), the training loss
    and the latest validation metric; and one line after each validation."""

    def __init__(self, every_n_steps: int = 100) -> None:
        if int(every_n_steps) < 1:
            raise ValueError(f"progress_every_n_steps must be >= 1, got {every_n_steps}")
        self.every = int(every_n_steps)
        self._since = 0.0  # start of the current throughput window
        self._paused = 0.0  # validation seconds inside the window
        self._val_started = 0.0
        self._tasks = 0
        self._val: tuple[str, float, int] | None = None  # (name, value, step)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._since, self._paused, self._tasks = time.perf_counter(), 0.0, 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # Each rank holds its share of the meta-batch; the throughput is of the whole job.
        self._tasks += int(getattr(batch, "num_tasks", 0)) * trainer.world_size
        step = trainer.global_step
        if step % self.every and step != trainer.max_steps:
            return
        now = time.perf_counter()
        rate = self._tasks / max(now - self._since - self._paused, 1e-9)
        self._since, self._paused, self._tasks = now, 0.0, 0
        if not trainer.is_global_zero:
            return
        total = f"/{trainer.max_steps}" if trainer.max_steps and trainer.max_steps > 0 else ""
        parts = [f"step {step}{total}", f"{rate:.1f} tasks/s"]
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None:
            parts.append(f"train/loss {float(loss):.4g}")
        if self._val is not None:
            name, value, at = self._val
            parts.append(f"{name} {value:.4g} (step {at})")
        log.info(" | ".join(parts))

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_started = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._paused += time.perf_counter() - self._val_started
        if trainer.sanity_checking:
            return
        name = f"val/{getattr(pl_module, 'metric_name', 'loss')}"
        value = trainer.callback_metrics.get(name)
        if value is None:
            return
        self._val = (name, float(value), trainer.global_step)
        if trainer.is_global_zero:
            ci = trainer.callback_metrics.get(f"{name}_ci95")
            pm = f" +- {float(ci):.4g}" if ci is not None else ""
            log.info(f"validation at step {trainer.global_step}: {name} {float(value):.4g}{pm}")


def interactive() -> bool:
    """Whether a person is watching: both output streams are terminals."""
    return sys.stdout.isatty() and sys.stderr.isatty()


def progress_callbacks(cfg: DictConfig) -> tuple[bool, list[Callback]]:
    """(``enable_progress_bar``, extra callbacks) for ``progress: auto|bar|log``."""
    mode = str(cfg.get("progress", "auto"))
    if mode not in MODES:
        raise ValueError(f"progress={mode!r} is not one of {', '.join(MODES)}")
    if mode == "auto":
        mode = "bar" if interactive() else "log"
    if mode == "bar":
        return True, []
    return False, [ProgressLog(cfg.get("progress_every_n_steps", 100))]
