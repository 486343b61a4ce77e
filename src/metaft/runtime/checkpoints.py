"""Checkpoints written atomically, never over the last good one with non-finite weights."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from metaft.core.errors import NonFiniteLossError


def ensure_finite_weights(trainer: L.Trainer) -> None:
    """Refuse to save non-finite weights over the last good checkpoint."""
    module = trainer.lightning_module
    if not all(torch.isfinite(p).all() for p in module.parameters()):
        raise NonFiniteLossError(
            f"the weights became NaN/Inf after meta-step {trainer.global_step}; the last good checkpoint is "
            "kept. Likely cause: a step size too large (algorithm.inner_lr or algorithm.optimizer.lr)."
        )


def atomic_save(trainer: L.Trainer, path: Path) -> None:
    """``trainer.save_checkpoint`` to a temporary file, then rename: a kill mid-save never leaves a
    corrupt checkpoint. Every rank must call it (rank 0 writes)."""
    ensure_finite_weights(trainer)
    tmp = path.with_name(f".{path.name}.tmp")
    trainer.save_checkpoint(tmp, weights_only=False)
    if trainer.is_global_zero:
        os.replace(tmp, path)


class AtomicModelCheckpoint(ModelCheckpoint):
    """Lightning's best-by-validation checkpointing, written atomically."""

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        atomic_save(trainer, Path(filepath))
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath


class AtomicLastCheckpoint(Callback):
    """Keeps ``checkpoints/last.ckpt`` fresh every ``every_n_train_steps`` meta-steps, after every
    validation and at the end, so a killed run loses at most N steps."""

    def __init__(self, dirpath: str | Path, every_n_train_steps: int) -> None:
        if isinstance(every_n_train_steps, bool) or not isinstance(every_n_train_steps, int) or every_n_train_steps < 0:
            raise ValueError(f"checkpoint.every_n_train_steps must be a number of steps >= 0 (0: only after validation "
                             f"and at the end), got {every_n_train_steps!r}")
        self.path = Path(dirpath) / "last.ckpt"
        self.every = every_n_train_steps
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self.every > 0 and trainer.global_step % self.every == 0:
            atomic_save(trainer, self.path)

    def on_validation_end(self, trainer: L.Trainer, *args: Any) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            atomic_save(trainer, self.path)

    def on_train_end(self, trainer: L.Trainer, *args: Any) -> None:
        atomic_save(trainer, self.path)
