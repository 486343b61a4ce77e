"""Progress display: Lightning's bar on a terminal, plain log lines everywhere else.

A progress bar written to a file (CI logs, SLURM's ``slurm-*.out``) is a wall of control
characters or one line at the very end; periodic log lines read well in both.
"""
from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, Timer
from omegaconf import DictConfig

log = logging.getLogger(__name__)

MODES = ("auto", "bar", "log")


def duration(seconds: float) -> str:
    """``42 s``, ``3.5 min``, ``2.1 h``: a duration at the precision an estimate deserves."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class ProgressLog(Callback):
    """Plain progress lines for logs.

    Training: every ``every_n_steps`` meta-steps (and at the last one), and in between whenever
    ``every_s`` seconds passed without a line (the first one after ``first_after_s``, so a slow
    run speaks within seconds), a line with the step, the throughput since the previous line
    (validation time excluded), the training loss, the latest validation metric and, while at
    least ``eta_min_s`` remain, the estimated time to the end of training (validations included)
    and of the test after it. One line after each validation. Validation and test: a line every
    ``every_s`` seconds with the batches done and the time left."""

    def __init__(self, every_n_steps: int = 100, every_s: float = 30.0, first_after_s: float = 5.0,
                 test: bool = True, eta_min_s: float = 30.0) -> None:
        if int(every_n_steps) < 1:
            raise ValueError(f"progress_every_n_steps must be >= 1, got {every_n_steps}")
        self.every = int(every_n_steps)
        self.every_s, self.first_after_s, self.test, self.eta_min_s = every_s, first_after_s, test, eta_min_s
        self._since = 0.0  # start of the current throughput window
        self._paused = 0.0  # validation seconds inside the window
        self._val_started = 0.0
        self._tasks = 0
        self._steps = 0  # steps in the current window
        self._val: tuple[str, float, int] | None = None  # (name, value, step)
        self._started = 0.0  # training start, and training seconds / steps since (for the estimate)
        self._train_s = 0.0
        self._train_steps = 0
        self._last_line = 0.0
        self._lines = 0
        self._val_s: float | None = None  # the last validation's seconds
        self._val_batches = 0
        self._eval_started = 0.0  # a validation or test loop in progress: its start and last line
        self._eval_line = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        now = time.perf_counter()
        self._since, self._paused, self._tasks, self._steps = now, 0.0, 0, 0
        self._started, self._last_line, self._train_s, self._train_steps, self._lines = now, now, 0.0, 0, 0

    def _due(self, step: int, now: float, trainer: L.Trainer) -> bool:
        if step % self.every == 0 or step == trainer.max_steps:
            return True
        wait = self.first_after_s if self._lines == 0 else self.every_s
        return now - self._last_line >= wait

    def _eta(self, trainer: L.Trainer, step: int) -> str | None:
        """``about X left (then the test, about Y)``, or None while too little is known or left."""
        if not trainer.max_steps or trainer.max_steps < 0 or self._train_steps == 0:
            return None
        per_step = self._train_s / self._train_steps
        left = (trainer.max_steps - step) * per_step
        every = getattr(trainer, "val_check_batch", None)
        if self._val_s is not None and isinstance(every, int) and every > 0:
            validations = (trainer.max_steps // every - step // every) + (trainer.max_steps % every != 0)
            left += validations * self._val_s
        timer = next((c for c in getattr(trainer, "callbacks", []) if isinstance(c, Timer)), None)
        remaining = timer.time_remaining() if timer is not None else None
        if remaining is not None:  # trainer.max_time stops the run first
            left = min(left, max(remaining, 0.0) + (self._val_s or 0.0))  # then the validation at the end
        test = None
        val_batches = sum(getattr(trainer, "num_val_batches", None) or [0])
        if self.test and self._val_s is not None and val_batches:
            test_batches = self._test_batches(trainer)
            test = self._val_s * test_batches / val_batches if test_batches else None
        if left + (test or 0.0) < self.eta_min_s:
            return None
        text = f"about {duration(left)} left"
        return text + (f" (then the test, about {duration(test)})" if test else "")

    @staticmethod
    def _test_batches(trainer: L.Trainer) -> int:
        """Test batches of the datamodule, from its episode counts (the test loop is not set up yet)."""
        dm = getattr(trainer, "datamodule", None)
        test, val = getattr(dm, "test_episodes", None), getattr(dm, "val_episodes", None)
        val_batches = sum(getattr(trainer, "num_val_batches", None) or [0])
        if isinstance(test, int) and isinstance(val, int) and val > 0:
            return max(1, round(val_batches * test / val))
        return 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # Each rank holds its share of the meta-batch; the throughput is of the whole job.
        self._tasks += int(getattr(batch, "num_tasks", 0)) * trainer.world_size
        self._steps += 1
        step = trainer.global_step
        now = time.perf_counter()
        if not self._due(step, now, trainer):
            return
        seconds = max(now - self._since - self._paused, 1e-9)
        rate = f"{self._tasks / seconds:.1f} tasks/s" if self._tasks else f"{self._steps / seconds:.2f} steps/s"
        self._train_s += seconds
        self._train_steps += self._steps
        self._since, self._paused, self._tasks, self._steps = now, 0.0, 0, 0
        self._last_line, self._lines = now, self._lines + 1
        if not trainer.is_global_zero:
            return
        total = f"/{trainer.max_steps}" if trainer.max_steps and trainer.max_steps > 0 else ""
        parts = [f"step {step}{total}", rate]
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None:
            parts.append(f"train/loss {float(loss):.4g}")
        if self._val is not None:
            name, value, at = self._val
            parts.append(f"{name} {value:.4g} (step {at})")
        eta = self._eta(trainer, step)
        if eta:
            parts.append(eta)
        log.info(" | ".join(parts))

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_started = time.perf_counter()
        self._eval_started = self._eval_line = self._val_started

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_started = self._eval_line = time.perf_counter()

    def _eval_progress(self, trainer: L.Trainer, what: str, done: int, total: int) -> None:
        """A line every ``every_s`` seconds (the first after ``first_after_s``) of a long evaluation."""
        now = time.perf_counter()
        first = self._eval_line == self._eval_started
        if now - self._eval_line < (self.first_after_s if first else self.every_s) or not trainer.is_global_zero:
            return
        self._eval_line = now
        left = (now - self._eval_started) / done * (total - done) if total else None
        eta = f", about {duration(left)} left" if left is not None else ""
        log.info(f"{what}: batch {done}/{total or '?'}{eta}")

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if not trainer.sanity_checking:
            self._eval_progress(trainer, f"validation at step {trainer.global_step}", batch_idx + 1,
                                sum(trainer.num_val_batches or [0]))

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_progress(trainer, "test", batch_idx + 1, sum(trainer.num_test_batches or [0]))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        spent = time.perf_counter() - self._val_started
        self._paused += spent
        if trainer.sanity_checking:
            return
        self._val_s = spent
        name = f"val/{getattr(pl_module, 'metric_name', 'loss')}"
        value = trainer.callback_metrics.get(name)
        if value is None:
            return
        self._val = (name, float(value), trainer.global_step)
        if trainer.is_global_zero:
            ci = trainer.callback_metrics.get(f"{name}_ci95")
            pm = f" +- {float(ci):.4g}" if ci is not None else ""
            log.info(f"validation at step {trainer.global_step}: {name} {float(value):.4g}{pm}")


def natural_key(name: str) -> list[Any]:
    """Sort key that orders numbers inside names by value: ``mse_step2`` before ``mse_step10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def metrics_table(metrics: dict[str, float]) -> str:
    """The metrics as aligned ``name  value`` lines, in natural order."""
    width = max((len(k) for k in metrics), default=0)
    return "\n".join(f"  {k:<{width}}  {v:.6g}" for k, v in sorted(metrics.items(), key=lambda kv: natural_key(kv[0])))


def log_metrics(title: str, metrics: dict[str, float]) -> None:
    """Log ``metrics`` under ``title`` (Lightning's own table sorts ``step10`` before ``step2``)."""
    if metrics:
        log.info(f"{title}:\n{metrics_table(metrics)}")


def interactive() -> bool:
    """Whether a person is watching: both output streams are terminals."""
    return sys.stdout.isatty() and sys.stderr.isatty()


def progress_mode(mode: Any = "auto") -> str:
    """``bar`` or ``log`` for ``progress: auto|bar|log`` (auto: the bar on a terminal)."""
    mode = str(mode)
    if mode not in MODES:
        raise ValueError(f"progress={mode!r} is not one of {', '.join(MODES)}")
    if mode == "auto":
        mode = "bar" if interactive() else "log"
    return mode


def progress_log(mode: Any = "auto", every_n_steps: int = 100, every_s: float = 30.0,
                 test: bool = True) -> ProgressLog | None:
    """The ``progress`` entry of ``conf/callbacks/``: plain log lines, or None when the bar shows progress."""
    if progress_mode(mode) == "bar":
        return None
    return ProgressLog(every_n_steps, every_s=float(every_s), test=bool(test))


def progress_callbacks(cfg: DictConfig) -> tuple[bool, list[Callback]]:
    """(``enable_progress_bar``, extra callbacks) for ``progress: auto|bar|log``."""
    mode = progress_mode(cfg.get("progress", "auto"))
    logger = progress_log(mode, cfg.get("progress_every_n_steps", 100), float(cfg.get("progress_every_s", 30)),
                          bool(cfg.get("test", True)))
    return mode == "bar", [logger] if logger is not None else []
