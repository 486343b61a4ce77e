"""What a task's outputs are scored by: regression (MSE) or classification (cross-entropy, accuracy).

One object answers every question that depends on the kind of task (the loss, the metric, which
way the metric is better), so no other module compares task-kind strings.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Kind = Literal["regression", "classification"]


class Objective:
    """The loss and metric of one kind of task. Outputs are ``[..., examples, C]``; regression
    targets ``[..., examples, 1]``, classification labels ``[..., examples]``."""

    def __init__(self, kind: Kind) -> None:
        if kind not in ("regression", "classification"):
            raise ValueError(f"task must be 'regression' or 'classification', got {kind!r}")
        self.kind = kind
        self.regression = kind == "regression"
        self.metric_name = "mse" if self.regression else "acc"
        self.mode: Literal["min", "max"] = "min" if self.regression else "max"
        # The loss as models.nets.batched_gradient writes its gradient out.
        self.gradient_kind = "mse" if self.regression else "cross_entropy"

    def loss(self, out: Tensor, y: Tensor) -> Tensor:
        """The mean loss over every example (of every task)."""
        if self.regression:
            return F.mse_loss(out, y)
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))

    def summed_task_loss(self, out: Tensor, y: Tensor) -> Tensor:
        """Over a leading task dimension, the sum of each task's mean loss: its gradient with
        respect to per-task parameters is each task's own."""
        if self.regression:  # the same sum in two ops instead of four (inner and outer graph)
            return F.mse_loss(out, y, reduction="sum") / out[0].numel()
        return self.per_task_loss(out, y).sum()

    def per_task_loss(self, out: Tensor, y: Tensor) -> Tensor:
        """One loss per task. ``out``: ``[tasks, Q, C]``."""
        if self.regression:
            return (out - y).pow(2).mean(dim=(-2, -1))
        return F.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="none").view(y.shape).mean(-1)

    def per_example_loss(self, out: Tensor, y: Tensor) -> Tensor:
        """One loss per example (supervised batches: fine-tuning). ``out``: ``[examples, C]``."""
        if self.regression:
            return (out - y).pow(2).flatten(1).mean(1)
        return F.cross_entropy(out, y, reduction="none")

    def per_example_metric(self, out: Tensor, y: Tensor) -> Tensor:
        """One value per example: squared error, or 100 for a correct class and 0 otherwise."""
        if self.regression:
            return (out - y).pow(2).flatten(1).mean(1)
        return (out.argmax(-1) == y).to(torch.promote_types(out.dtype, torch.float32)) * 100.0

    def per_task_metric(self, out: Tensor, y: Tensor) -> Tensor:
        """One value per task (and step): MSE, or accuracy in percent. ``out``: ``[..., Q, C]``."""
        if self.regression:
            return (out - y).pow(2).mean(dim=(-2, -1))
        # At least float32 (a half-precision mean of many 0/1 values loses counts).
        return (out.argmax(-1) == y).to(torch.promote_types(out.dtype, torch.float32)).mean(-1) * 100.0
