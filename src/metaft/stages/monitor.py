"""Stage 1's TensorBoard monitor: throughput, Meta-SGD's step sizes, episode images, the sinusoid
fit and, with ``logging.predictions``, a validation episode's predictions (see
``metaft.runtime.callbacks`` for what a run's ``tensorboard/`` holds)."""
from __future__ import annotations

import time
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from metaft.algorithms.episodic import MetaLearner
from metaft.data.episode import Episode
from metaft.data.episodic import split_generator
from metaft.data.sinusoid import SinusoidDataModule
from metaft.runtime.callbacks import log_step, render, tensorboard
from metaft.runtime.figures import predictions_figure, sinusoid_figure


def monitor(cfg: DictConfig) -> "MetaLearnerMonitor":
    images = bool(OmegaConf.select(cfg, "logging.images", default=True))
    predictions = images and bool(OmegaConf.select(cfg, "logging.predictions", default=False))
    return MetaLearnerMonitor(images=images, predictions=predictions)


# The sinusoid task drawn in the fit figure: its own stream of the validation split, so it is
# the same task in every run with the same seed, whatever the evaluation batch sizes.
_FIT_TASK_INDEX = 1
_FIT_POINTS = 200


class MetaLearnerMonitor(Callback):
    """Logs, every ``log_every_n_steps``: ``train/tasks_per_s`` and, for Meta-SGD, the learned
    step sizes' ``inner_lr/{mean,min,max}``; at every validation the ``inner_lr/alpha``
    histogram. With ``images``: ``episode/{support,query}`` (one task of the first training
    meta-batch, for image datasets) and ``val/sinusoid_fit`` at every validation."""

    def __init__(self, images: bool = True, predictions: bool = False) -> None:
        self.images = images
        self.predictions = predictions
        self._window_start: float | None = None
        self._window_tasks = 0
        self._episode_logged = False

    # --------------------------------------------------------------------------- throughput
    # tasks/s counts meta-training only: the window opens at a batch's start and is dropped
    # when validation begins (which, with its images and checkpoints, would dilute the rate).
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._window_start = None
        self._episode_logged = False

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.images and not self._episode_logged and isinstance(batch, Episode):
            self._episode_logged = True
            if batch.support_x.dim() >= 5 and trainer.is_global_zero:  # [tasks, N, C, H, W]: images
                self.log_episode_images(trainer, batch)
        if self._window_start is None:
            self._window_start, self._window_tasks = time.perf_counter(), 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if isinstance(batch, Episode):
            self._window_tasks += batch.num_tasks * trainer.world_size  # each rank holds a share
        if not trainer._logger_connector.should_update_logs:
            return
        now = time.perf_counter()
        # Only where batches are tasks (meta-training): fine-tuning's batches are not, and logged 0.
        if self._window_start is not None and now > self._window_start and isinstance(batch, Episode):
            pl_module.log("train/tasks_per_s", self._window_tasks / (now - self._window_start))
        self._window_start, self._window_tasks = now, 0
        alphas = learned_step_sizes(pl_module)
        if alphas is not None:
            pl_module.log("inner_lr/mean", alphas.mean())
            pl_module.log("inner_lr/min", alphas.min())
            pl_module.log("inner_lr/max", alphas.max())

    # ---------------------------------------------------------------------------- validation
    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._window_start = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn != "fit" or trainer.sanity_checking:
            return
        tb = tensorboard(trainer)
        if tb is None or not trainer.is_global_zero:
            return
        step = log_step(trainer)
        alphas = learned_step_sizes(pl_module)
        if alphas is not None:
            tb.experiment.add_histogram("inner_lr/alpha", alphas.float().cpu(), step)
        if self.images and isinstance(trainer.datamodule, SinusoidDataModule) and isinstance(pl_module, MetaLearner):
            fit = sinusoid_fit(pl_module, trainer.datamodule)
            task_mse = float(np.mean((fit["after"] - fit["truth"]) ** 2))
            val = trainer.callback_metrics.get("val/mse")
            head = f"step {trainer.global_step}" + (f": val/mse {float(val):.3g}" if val is not None else "")
            title = f"{head}; this task after {fit['steps']} step{'s' * (fit['steps'] != 1)}: MSE {task_mse:.3g}"
            image = render(sinusoid_figure(**fit, title=title))
            tb.experiment.add_image("val/sinusoid_fit", image, step, dataformats="HWC")
        elif self.predictions and isinstance(pl_module, MetaLearner) and pl_module.metric_name == "acc":
            shown = episode_predictions(pl_module, trainer.datamodule)
            if shown is not None:
                val = trainer.callback_metrics.get("val/acc")
                head = f"step {trainer.global_step}" + (f": val/acc {float(val):.1f}%" if val is not None else "")
                right = int((shown["pred"] == shown["query_y"]).sum())
                title = f"{head}; this episode: {right}/{len(shown['pred'])} queries right"
                tb.experiment.add_image("val/episode_predictions", render(predictions_figure(**shown, title=title)),
                                        step, dataformats="HWC")

    # ------------------------------------------------------------------------------ images
    def log_episode_images(self, trainer: L.Trainer, episode: Episode) -> None:
        tb = tensorboard(trainer)
        if tb is None:
            return
        step = log_step(trainer)
        tb.experiment.add_image("episode/support", episode_grid(episode.support_x[0], episode.support_y[0]), step)
        tb.experiment.add_image("episode/query", episode_grid(episode.query_x[0], episode.query_y[0]), step)


def learned_step_sizes(module: L.LightningModule) -> Tensor | None:
    """All of Meta-SGD's learned step sizes as one flat tensor (``None`` for other learners)."""
    lrs = getattr(module, "inner_lrs", None)
    if lrs is None:
        return None
    return torch.cat([p.detach().reshape(-1) for p in lrs.values()])


def episode_grid(x: Tensor, y: Tensor, pad: int = 2) -> Tensor:
    """One task's images ``[N, C, H, W]`` as one ``[C, H', W']`` image: a row per class (in
    label order; examples keep their episode order), ``pad`` grey pixels between cells."""
    x = x.detach().float().cpu()
    if x.shape[1] not in (1, 3):  # TensorBoard shows grey or RGB only
        x = x[:, :1]
    lo, hi = x.min(), x.max()
    if lo < 0 or hi > 1:  # normalised inputs: stretch to [0, 1] for display
        x = (x - lo) / (hi - lo).clamp_min(1e-12)
    labels = y.detach().cpu().reshape(len(x), -1)[:, 0]
    if labels.is_floating_point():  # no classes to group by
        labels = torch.zeros(len(x), dtype=torch.long)
    rows = [x[labels == c] for c in labels.unique()]
    _, c, h, w = x.shape
    cols = max(len(r) for r in rows)
    grid = torch.full((c, pad + len(rows) * (h + pad), pad + cols * (w + pad)), 0.5)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            top, left = pad + i * (h + pad), pad + j * (w + pad)
            grid[:, top : top + h, left : left + w] = img
    return grid


@torch.no_grad()
def sinusoid_fit(learner: MetaLearner, dm: SinusoidDataModule) -> dict[str, Any]:
    """One fixed validation task: its support points, the ground truth on a grid over the input
    range, and the learner's prediction there before and after ``eval_inner_steps`` steps."""
    g = split_generator(dm.seed, "val", _FIT_TASK_INDEX)
    task = dm.sample("val", 1, g)
    # ``sample`` draws the task's function first, so the same stream gives its amplitude and
    # phase (tests/integration/test_tensorboard.py checks the curve passes the support points).
    amp, phase = dm.sample_functions(1, split_generator(dm.seed, "val", _FIT_TASK_INDEX))
    grid = torch.linspace(*dm.x_range, _FIT_POINTS).view(1, -1, 1)
    probe = Episode(task.support_x, task.support_y, grid, torch.zeros_like(grid))
    dtype = next(learner.parameters()).dtype
    probe = probe.to(learner.device, dtype)
    out = learner.query_outputs(probe, learner.eval_inner_steps, first_order=True, all_steps=True)
    out = out[0, :, :, 0].detach().cpu()  # [steps+1, points]
    return {
        "support_x": task.support_x[0, :, 0].numpy(),
        "support_y": task.support_y[0, :, 0].numpy(),
        "x": grid[0, :, 0].numpy(),
        "truth": (amp * torch.sin(grid - phase))[0, :, 0].numpy(),
        "before": out[0].numpy(),
        "after": out[-1].numpy(),
        "steps": learner.eval_inner_steps,
    }


@torch.no_grad()
def episode_predictions(learner: MetaLearner, dm: Any, max_queries: int = 5) -> dict[str, Tensor] | None:
    """The first validation episode (the same in every run with the same seed), adapted as at
    validation: its support set, up to ``max_queries`` queries per class and the predicted classes.
    None for datasets without image episodes."""
    if not hasattr(dm, "sample"):
        return None
    episode = dm.sample("val", 1, split_generator(dm.seed, "val", 0))
    if episode.support_x.dim() < 5:  # [tasks, N, C, H, W]: images only
        return None
    out = learner.query_outputs(episode.to(learner.device), learner.eval_inner_steps, first_order=True)
    pred = out[0].argmax(-1).cpu()
    qy = episode.query_y[0].cpu()
    keep = torch.cat([torch.nonzero(qy == c).flatten()[:max_queries] for c in qy.unique()])
    return {"support_x": episode.support_x[0].cpu(), "support_y": episode.support_y[0].cpu(),
            "query_x": episode.query_x[0].cpu()[keep], "query_y": qy[keep], "pred": pred[keep]}
