"""Stage 2's TensorBoard figures, at the starting point (step 0) and at every validation:
``val/fit`` for a one-dimensional regression target (the training points, the true function on
the test grid, the model's prediction now and at the start), ``val/predictions`` for an image
target (a few training images per class, then validation images framed right or wrong)."""
from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from metaft.finetune.targets import SupervisedTarget
from metaft.runtime.callbacks import log_step, render, tensorboard
from metaft.runtime.figures import predictions_figure, sinusoid_figure

SHOWN_CLASSES = 10  # rows of the predictions figure: a 20-way target shows its first ten classes
SHOWN_PER_CLASS = 5


class FineTuneFigures(Callback):
    """Draws the figures after each validation of a fit (the one before training included)."""

    def __init__(self) -> None:
        self._start: np.ndarray | None = None  # the regression prediction at the starting point

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule
        tb = tensorboard(trainer)
        if trainer.state.fn != "fit" or tb is None or not trainer.is_global_zero or not isinstance(dm, SupervisedTarget):
            return
        if trainer.sanity_checking and trainer.global_step != 0:
            return  # a resumed run's check is not the starting point
        metric = getattr(pl_module, "metric_name", "loss")
        val = trainer.callback_metrics.get(f"val/{metric}")
        head = f"step {trainer.global_step}" + (f": val/{metric} {float(val):.4g}" if val is not None else "")
        step = 0 if trainer.sanity_checking else log_step(trainer)
        train_x, train_y = dm.splits["train"]
        regression = dm.objective.regression
        if regression and train_x.dim() == 2 and train_x.shape[1] == 1:
            fig = self._fit(pl_module, dm, head)
            tb.experiment.add_image("val/fit", render(fig), step, dataformats="HWC")
        elif not regression and train_x.dim() == 4:
            fig = _predictions(pl_module, dm, head)
            tb.experiment.add_image("val/predictions", render(fig), step, dataformats="HWC")

    @torch.no_grad()
    def _fit(self, module: L.LightningModule, dm: SupervisedTarget, head: str) -> Any:
        (tx, ty), (gx, gy) = dm.splits["train"], dm.splits["test"]
        order = gx[:, 0].argsort()
        gx, gy = gx[order], gy[order]
        pred = _outputs(module, gx)[:, 0].numpy()
        if self._start is None:
            self._start = pred
        mse = float(np.mean((pred - gy[:, 0].numpy()) ** 2))
        return sinusoid_figure(tx[:, 0].numpy(), ty[:, 0].numpy(), gx[:, 0].numpy(), gy[:, 0].numpy(), self._start,
                               pred, 0, title=f"{head}; MSE on the plotted function {mse:.3g}",
                               labels=("the starting point", "now", "training points"))


def _outputs(module: L.LightningModule, x: Tensor) -> Tensor:
    was_training = module.training
    module.eval()
    try:
        p = next(module.parameters())
        return module(x.to(p.device, p.dtype)).float().cpu()
    finally:
        module.train(was_training)


@torch.no_grad()
def _predictions(module: L.LightningModule, dm: SupervisedTarget, head: str) -> Any:
    (tx, ty), (vx, vy) = dm.splits["train"], dm.splits["val"]
    classes = vy.unique()[:SHOWN_CLASSES]
    train = torch.cat([torch.nonzero(ty == c).flatten()[:SHOWN_PER_CLASS] for c in classes])
    val = torch.cat([torch.nonzero(vy == c).flatten()[:SHOWN_PER_CLASS] for c in classes])
    # Predicted among all the target's classes, on the validation images alone (as the
    # evaluation batches are, up to their size).
    pred = _outputs(module, vx[val]).argmax(-1)
    right = int((pred == vy[val]).sum())
    return predictions_figure(tx[train], ty[train], vx[val], vy[val], pred,
                              title=f"{head}; shown: {right}/{len(val)} validation images right")
