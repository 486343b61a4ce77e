"""TensorBoard monitoring both stages share: learning rates, the starting point, figures, and the
hparams record that lets the HParams tab compare a sweep's runs (stage 1's throughput, step sizes
and images: ``metaft.stages.monitor``).

Scalars go through ``LightningModule.log`` like every other metric (so they share its steps and
its ``log_every_n_steps`` gating); histograms and images, which ``log`` cannot carry, go to the
run's ``TensorBoardLogger`` at the step Lightning gives the scalars.

What a run's ``tensorboard/`` holds (``M`` is ``mse`` or ``acc``; step ``0`` is before adaptation):

- ``train/loss`` (meta-loss), ``train/acc``; on logging steps only: ``train/M_step{i}``,
  ``train/loss_step{i}`` (classification), ``train/grad_norm`` (before clipping) — the learner;
  ``train/tasks_per_s``, ``inner_lr/{mean,min,max}`` (Meta-SGD) — here; ``lr-<Optimizer>`` —
  Lightning's ``LearningRateMonitor``.
- ``{val,test}/M``, ``/M_ci95``, ``/M_step{i}``, ``/loss``, ``/loss_step{i}`` (classification),
  ``/episodes`` — the learner; at every validation the ``inner_lr/alpha`` histogram (Meta-SGD)
  and the ``val/sinusoid_fit`` image; ``episode/{support,query}`` once (image datasets); with
  ``logging.predictions``, ``val/episode_predictions`` (a validation episode, queries marked right
  or wrong) at every validation.
- ``hp/{val,test}_M`` and the hparams session (``log_hparams``) when the run ends.
- Fine-tuning: ``val/*`` at step 0 from the validation before training (``StartingPoint``); with
  ``logging.images``, ``val/fit`` or ``val/predictions`` there and at every validation
  (``metaft.finetune.monitor``).
"""
from __future__ import annotations

import logging
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import Callback, EarlyStopping
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf


log = logging.getLogger(__name__)

def early_stopping(monitor: str, mode: str, patience: int = 5, min_delta: float = 0.0) -> EarlyStopping | None:
    """The ``early_stopping`` entry of ``conf/callbacks/finetune.yaml``: stop after ``patience``
    validations without improvement of the stage's metric (the runtime gives ``monitor``, ``mode``);
    None when ``patience`` is 0, which disables it."""
    if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
        raise ValueError(f"early_stopping.patience must be a number of validations >= 0 (0 disables early stopping), "
                         f"got {patience!r}")
    return EarlyStopping(monitor=monitor, mode=mode, patience=patience, min_delta=float(min_delta)) if patience else None


def tensorboard(trainer: L.Trainer) -> TensorBoardLogger | None:
    return next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)


def log_step(trainer: L.Trainer) -> int:
    """The step Lightning gives the scalars logged now (the batch counter of the fit loop)."""
    return trainer.fit_loop.epoch_loop._batches_that_stepped


class StartingPoint(Callback):
    """The validation Lightning runs before training (``trainer.num_sanity_val_steps=-1``, which
    fine-tuning sets) as the starting point: its ``val/*`` at step 0 in TensorBoard, so the
    learning curves start where the checkpoint stood, and one log line. Lightning itself keeps
    nothing of that validation."""

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking or trainer.global_step != 0 or not trainer.is_global_zero:
            return  # a resumed run's check is not the starting point
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        if not metrics:
            return
        tb = tensorboard(trainer)
        if tb is not None:
            for k, v in metrics.items():
                tb.experiment.add_scalar(k, v, 0)
        shown = [f"{k} {v:.4g}" for k, v in sorted(metrics.items()) if not k.endswith(("_ci95", "/examples", "/episodes"))]
        log.info(f"before training (the starting point): {', '.join(shown)}")


def render(fig: Any) -> np.ndarray:
    """A matplotlib figure as an ``[H, W, 3]`` uint8 array, without pyplot's global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def flat_hparams(cfg: DictConfig) -> dict[str, float | int | str]:
    """The algorithm, dataset and model config flattened to ``group/key[/subkey]``, plus the seed.
    Lists and booleans become strings (TensorBoard takes numbers and strings); nulls are left out,
    so that a key set in some runs of a sweep keeps one type."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}/{k}", v)
        elif node is not None:
            flat[prefix] = node if isinstance(node, (int, float, str)) and not isinstance(node, bool) else str(node)

    for group in ("algorithm", "dataset", "model"):
        walk(group, OmegaConf.to_container(cfg[group], resolve=True))
    flat["seed"] = int(cfg.seed)
    return flat


def log_hparams(trainer: L.Trainer, cfg: DictConfig, results: dict[str, Any]) -> None:
    """Record the run for TensorBoard's HParams tab: its hyperparameters (``flat_hparams``) and
    its final metric, ``hp/{val,test}_{mse|acc}`` (the values in results.json), as scalars.

    Only the session records are written, not Lightning's per-run ``experiment`` record: the
    HParams tab shows the first such record it finds for the whole log directory, which would
    hide the keys and types of every other run in a sweep over algorithms, models or datasets.
    Without one, TensorBoard builds the table from all runs' sessions and scalars."""
    tb = tensorboard(trainer)
    metric = getattr(trainer.lightning_module, "metric_name", None)
    if tb is None or metric is None or not trainer.is_global_zero:
        return
    metrics = {f"hp/{stage}_{metric}": float(results[f"{stage}/{metric}"])
               for stage in ("val", "test") if f"{stage}/{metric}" in results}
    if not metrics:
        return
    from torch.utils.tensorboard.summary import hparams

    tb.log_metrics(metrics, step=trainer.global_step)
    _, session_start, session_end = hparams(flat_hparams(cfg), metrics)
    writer = tb.experiment._get_file_writer()  # the trainer closed it after test; this reopens
    writer.add_summary(session_start, trainer.global_step)
    writer.add_summary(session_end, trainer.global_step)
    tb.finalize("success")  # flush and close again
