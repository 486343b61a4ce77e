"""Evaluation on fixed episodes, shared by every learner: each task's query metric and loss
before and after every adaptation step, their means and 95% intervals, and the logs
(``Evaluation``, a part of ``MetaLearner``; ``log_scores``, fine-tuning's report too)."""
from __future__ import annotations

import lightning as L
import torch
from torch import Tensor

from metaft.core import tasks
from metaft.core.metrics import EpisodeStats
from metaft.data.episode import Episode


def log_scores(module: L.LightningModule, stage: str, metric_name: str, stats: EpisodeStats, loss: EpisodeStats,
               counted: str) -> tuple[Tensor, Tensor]:
    """Log what every evaluation reports, from its per-item scores (episodes in stage 1, examples
    in fine-tuning): ``{stage}/{metric_name}`` and its 95% interval, ``{stage}/loss`` and how
    many items (``{stage}/{counted}``), at the last column (the last adaptation step). Returns
    the metric's and the loss's means per column."""
    # torchmetrics squeezes one-element results; reshape keeps one entry per column.
    mean, ci95, n = (t.reshape(-1) for t in stats.compute())
    loss_mean = loss.compute()[0].reshape(-1)
    module.log(f"{stage}/{metric_name}", mean[-1].float(), prog_bar=stage == "val")
    module.log(f"{stage}/{metric_name}_ci95", ci95[-1].float())
    module.log(f"{stage}/loss", loss_mean[-1].float())
    module.log(f"{stage}/{counted}", n[0].float())
    return mean, loss_mean


class Evaluation(L.LightningModule):
    """``MetaLearner``'s validation and test: ``adaptation_curve`` runs ``query_outputs`` (the
    learner's) for ``eval_inner_steps`` with every step kept, scored by the learner's objective.
    The last evaluation's per-episode scores stay in ``episode_scores`` for the per-episode file."""

    def on_validation_epoch_start(self) -> None:
        self.eval_stats = EpisodeStats(self.eval_inner_steps + 1).to(self.device)
        self.eval_loss = EpisodeStats(self.eval_inner_steps + 1).to(self.device)

    on_test_epoch_start = on_validation_epoch_start

    def adaptation_curve(self, episode: Episode, steps: int) -> tuple[Tensor, Tensor]:
        """Query metric and loss per task and inner step (``[tasks, steps+1]``; column 0 is
        before adaptation)."""
        # Adaptation needs gradients even though Lightning disables them at evaluation. First
        # order is exact for the adapted values; only the outer gradient would differ, and none
        # is taken. The meta-parameters are frozen meanwhile: otherwise every query output would
        # keep an outer graph (all steps, all tasks of the batch: gigabytes for Conv4).
        with torch.enable_grad(), tasks.frozen(self):
            out = self.query_outputs(episode, steps, first_order=True, all_steps=True)
        out = out.detach()  # [tasks, steps+1, Q, C]
        y = episode.query_y.unsqueeze(1).expand(-1, out.shape[1], *episode.query_y.shape[1:])
        loss = self.per_task_loss(out.flatten(0, 1), y.flatten(0, 1)).view(out.shape[:2])
        return self.per_task_metric(out, y), loss

    def evaluation_step(self, episode: Episode) -> None:
        metric, loss = self.adaptation_curve(episode, self.eval_inner_steps)
        self.eval_stats.update(metric)
        self.eval_loss.update(loss)

    def validation_step(self, episode: Episode, batch_idx: int) -> None:
        self.evaluation_step(episode)

    def test_step(self, episode: Episode, batch_idx: int) -> None:
        self.evaluation_step(episode)

    def log_evaluation(self, stage: str) -> None:
        mean, loss_mean = log_scores(self, stage, self.metric_name, self.eval_stats, self.eval_loss, "episodes")
        self.log_per_step(stage, mean, loss_mean)
        # Kept for the per-episode file (stages.meta): [episodes, steps+1], ranks in order.
        self.episode_scores[stage] = (self.eval_stats.gathered, self.eval_loss.gathered)
        self.eval_stats.reset()
        self.eval_loss.reset()

    def log_per_step(self, stage: str, metric: Tensor, loss: Tensor) -> None:
        """``{stage}/{metric}_step{i}`` for every inner step ``i`` (0: before adaptation), and
        ``{stage}/loss_step{i}`` where the loss is not the metric itself (classification)."""
        for i in range(metric.shape[0]):
            self.log(f"{stage}/{self.metric_name}_step{i}", metric[i].float())
            if not self.objective.regression:  # else the loss is the metric itself
                self.log(f"{stage}/loss_step{i}", loss[i].float())

    def on_validation_epoch_end(self) -> None:
        self.log_evaluation("val")

    def on_test_epoch_end(self) -> None:
        self.log_evaluation("test")
