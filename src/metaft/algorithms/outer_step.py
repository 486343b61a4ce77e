"""The outer step every learner shares: one optimizer step under Lightning's manual optimisation,
with data-parallel sync of the meta-gradient, the NaN policy, clipping, the schedule and the
training logs (``OuterStep``, a part of ``MetaLearner``)."""
from __future__ import annotations

from typing import Any, Callable

import lightning as L
import torch
from torch import Tensor

from metaft.core import tasks
from metaft.core.errors import NonFiniteLossError
from metaft.data.episode import Episode
from metaft.runtime.distributed import all_reduce_sum_


class OuterStep(L.LightningModule):
    """``MetaLearner``'s training side: ``training_step`` runs ``meta_backward`` (the learner's) in
    ``outer_step``. Uses the learner's ``optimizer_factory``, ``scheduler_factory``, ``grad_clip``,
    ``nonfinite``, ``skipped_steps`` and ``inner_lr`` (for the NaN message)."""

    def backward_(self, loss: Tensor) -> None:
        # Outside a Trainer (benchmarks, tests) the plain backward is the same computation.
        self.manual_backward(loss) if self._trainer is not None else loss.backward()

    def sync_meta_gradient(self, loss: Tensor) -> Tensor:
        """Average the meta-gradient (and the loss) over data-parallel ranks; return the loss.

        Each rank holds an equal share of the meta-batch, so the mean of the ranks' gradients
        is the gradient of the whole meta-batch. One flat all-reduce; the loss rides along, so
        every rank sees the same NaN/Inf verdict and none is left waiting in a collective."""
        world = self.trainer.world_size if self._trainer is not None else 1
        if world == 1:
            return loss
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        total = loss.detach().reshape(1).clone()
        all_reduce_sum_([*grads, total])
        for g in grads:
            g /= world
        return total[0] / world

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Regularisers on a schedule (DropBlock's ramp) follow the global step, which a resumed run restores.
        self.net.set_training_step(self.global_step)

    def training_step(self, episode: Episode, batch_idx: int) -> Tensor:
        return self.outer_step(lambda: self.meta_backward(episode), episode.query_y,
                               lambda: self.log_training_details(episode))

    def outer_step(self, backward: Callable[[], tuple[Tensor, Tensor]], y: Tensor, details: Callable[[], None]) -> Tensor:
        """One optimizer step: ``backward()`` forms the gradient and returns (loss, outputs for
        targets ``y``); then data-parallel sync, the NaN policy, ``details()`` on logging steps,
        clipping, the step and the scheduler."""
        opt = self.optimizers()
        opt.zero_grad(set_to_none=True)
        loss, out = backward()
        loss = self.sync_meta_gradient(loss.detach())
        finite = torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in self.parameters() if p.grad is not None)
        if not finite:
            msg = (
                f"non-finite meta-training loss or gradient (loss {loss.item()}) at step {self.global_step}. "
                f"Likely cause: a step size too large (algorithm.inner_lr={self.inner_lr}, or the optimizer's "
                "lr); lower it, or set algorithm.nonfinite=skip to drop such steps. The last good checkpoint is kept."
            )
            if self.nonfinite == "raise":
                raise NonFiniteLossError(msg)
            self.skipped_steps += 1
            # A step with no gradients leaves every parameter (and Adam's moments) untouched but
            # still counts, so max_steps and the per-step episode stream move on.
            opt.zero_grad(set_to_none=True)
            opt.step()
            self.log("train/skipped_steps", float(self.skipped_steps), on_step=True)
            return loss
        # Lightning writes step metrics only when this (its own, also used by its
        # LearningRateMonitor) says so; before clipping and the step, to see what the batch saw.
        if self._trainer is not None and self.trainer._logger_connector.should_update_logs:
            details()
        if self.grad_clip:
            self.clip_gradients(opt, gradient_clip_val=self.grad_clip, gradient_clip_algorithm="norm")
        opt.step()
        sched = self.lr_schedulers()
        if sched is not None:
            sched.step()
        self.log("train/loss", loss, prog_bar=True, on_step=True)
        if not self.objective.regression:
            with torch.no_grad():
                metric = self.per_task_metric(out.detach(), y).mean()
            self.log(f"train/{self.metric_name}", metric, prog_bar=True, on_step=True)
        return loss

    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            raise ValueError("algorithm.optimizer is not set; give an optimizer config with _partial_: true")
        opt = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer=opt), "interval": "step"}}

    def log_training_details(self, episode: Episode) -> None:
        """The meta-batch's query metric (and loss) before and after each inner step, and the
        meta-gradient's global norm before clipping (Reptile: its pseudo-gradient's). Called only
        on logging steps (every ``log_every_n_steps``) because it runs the inner loop again."""
        # The meta-step already updated any running statistics (and a carried inner optimiser state).
        with tasks.kept_buffers(self):
            metric, loss = self.adaptation_curve(episode, self.inner_steps)
        self.log_per_step("train", metric.mean(0), loss.mean(0))
        self.log_gradient_norm()

    def log_gradient_norm(self) -> None:
        norms = [torch.linalg.vector_norm(p.grad.detach()) for p in self.parameters() if p.grad is not None]
        if norms:
            self.log("train/grad_norm", torch.linalg.vector_norm(torch.stack(norms)))
