"""Supervised pre-training: the non-meta baseline ("Baseline" of Chen et al. 2019).

Training is ordinary classification over all training classes with mini-batches; evaluation fits a
new linear head per episode on the frozen body's features with the shared inner loop ``adapt``,
so the episodes are scored through the same metric path as every meta-learner.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaft.algorithms.feature_head import FeatureHeadLearner
from metaft.core.inner_loop import Params, adapt
from metaft.data.episodic import EpisodicDataModule
from metaft.data.episode import Episode


def _linear(p: Params, x: Tensor) -> Tensor:
    return F.linear(x, p["weight"], p["bias"])


class Pretrain(FeatureHeadLearner):
    """Body + a linear ``classifier`` over all training classes, trained on labelled batches.

    The classifier's size comes from the datamodule's ``num_classes("train")`` when fitting
    starts, or from the checkpoint when one is loaded into a fresh learner (``run.evaluate``).
    At validation and test a zero-initialised head with one output per way is fitted on the
    support features by ``eval_inner_steps`` gradient steps of size ``inner_lr`` (logged per step
    as ``acc_stepN``); the body is frozen.

    Args:
        batch_size: examples per training batch (over all devices).
        **kwargs: ``MetaLearner``'s arguments; ``inner_steps`` must be 0 (no inner loop in training)
            and ``eval_inner_steps`` > 0.
    """

    fits_head_at_eval = True

    def __init__(self, batch_size: int = 64, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if batch_size <= 0:
            raise ValueError(f"algorithm.batch_size must be > 0, got {batch_size}")
        if not self.eval_inner_steps:
            raise ValueError("algorithm=pretrain fits a new head at evaluation: set algorithm.eval_inner_steps > 0")
        self.batch_size = int(batch_size)
        self.classifier: nn.Linear | None = None

    def make_classifier(self, num_classes: int) -> None:
        body = next(self.net.parameters())
        self.classifier = nn.Linear(self.net.feature_dim, num_classes).to(dtype=body.dtype, device=body.device)

    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        dm = self.trainer.datamodule
        if not isinstance(dm, EpisodicDataModule):
            raise ValueError("algorithm=pretrain needs an EpisodicDataModule (trainer.fit(..., datamodule=dm))")
        dm.labelled_batch_size = self.batch_size  # its train loader now yields (x, y) batches
        n = dm.num_classes("train")
        if self.classifier is None:
            self.make_classifier(n)
        elif self.classifier.out_features != n:
            raise ValueError(
                f"the pre-training classifier has {self.classifier.out_features} classes but the dataset's "
                f"training split has {n}; train a new run for this dataset"
            )

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        # A freshly built learner (run.evaluate) has no classifier yet: size it from the checkpoint.
        if self.classifier is None and "classifier.weight" in state_dict:
            self.make_classifier(state_dict["classifier.weight"].shape[0])
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # ------------------------------------------------------------------------------ training
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        if isinstance(batch, Episode):
            raise TypeError("algorithm=pretrain trains on labelled (x, y) batches, but the train loader "
                            "yielded episodes; fit it with its datamodule (Pretrain.setup switches it)")
        x, y = batch
        return self.outer_step(lambda: self.batch_backward(x, y), y, self.log_gradient_norm)

    def batch_backward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-entropy of the classifier over all training classes on one labelled batch,
        backpropagated; (loss, logits). A NaN loss gives NaN gradients, which the outer step catches."""
        if self.classifier is None:
            raise RuntimeError("Pretrain.setup('fit') has not run: the classifier's size is unknown")
        out = self.classifier(self.net.body(x))
        loss = self.loss_fn(out, y)
        self.backward_(loss)
        return loss, out

    # ---------------------------------------------------------------------------- evaluation
    def head_logits(self, meta: dict[str, Any], fs: Tensor, sy: Tensor, fq: Tensor, ways: int, steps: int) -> Tensor:
        fs, fq = fs.detach(), fq.detach()  # the body is frozen; only the new head is fitted
        start = {"weight": fs.new_zeros(ways, fs.shape[-1]), "bias": fs.new_zeros(ways)}
        trajectory = adapt(_linear, start, fs, sy, self.loss_fn, steps, meta["lr"], first_order=True)
        return torch.stack([_linear(p, fq) for p in trajectory])
