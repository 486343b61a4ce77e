"""SimpleShot (Wang et al. 2019, "SimpleShot: Revisiting Nearest-Neighbor Classification for
Few-Shot Learning"): a body pre-trained as a classifier over all training classes, and at test time
the nearest class centroid of centred, L2-normalised features ("CL2N")."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from metaft.algorithms.feature_head import FeatureHeadLearner, one_hot
from metaft.algorithms.pretrain import Pretrain
from metaft.runtime.distributed import all_reduce_sum_


class SimpleShot(Pretrain):
    """Pre-training (``Pretrain``'s: a linear classifier by default, labelled batches), scored per
    episode by SimpleShot's rule: features ``f`` become ``(f - m) / |f - m|``, with ``m`` the mean
    feature of the training images; each class's centroid is the mean of its support features so
    transformed, and a query's logit for class ``k`` is minus its squared Euclidean distance to
    centroid ``k``. No head is fitted: ``eval_inner_steps`` must be 0 (or null).

    ``m`` is kept during training as the mean of the training batches' features, cumulative over
    the first ``1 / feature_momentum`` batches and then exponential with that momentum, so it
    follows the body as it trains (Wang et al. average over the whole training set once training
    is done). It is saved with the weights.

    Args:
        feature_momentum: weight of each new batch in the running mean, in (0, 1].
        eval_head: only ``centroid`` (the rule above); ``Pretrain``'s heads are not used.
        **kwargs: ``Pretrain``'s arguments.
    """

    fits_head_at_eval = False

    def __init__(self, feature_momentum: float = 0.01, eval_head: str = "centroid", **kwargs: Any) -> None:
        if eval_head != "centroid":
            raise ValueError(f"algorithm=simpleshot scores episodes by its nearest centroid (eval_head=centroid); "
                             f"got eval_head={eval_head!r}: use algorithm=pretrain for its fitted or logistic heads")
        if not 0 < feature_momentum <= 1:
            raise ValueError(f"algorithm.feature_momentum must be in (0, 1], got {feature_momentum!r}")
        # Pretrain's exactly solved evaluation has no head-fitting steps; query_outputs below puts
        # the centroid rule where its logistic probe would be.
        super().__init__(eval_head="logistic", **kwargs)
        self.eval_head = "centroid"
        self.feature_momentum = float(feature_momentum)
        self.register_buffer("feature_mean", torch.zeros(self.net.feature_dim))
        self.register_buffer("feature_batches", torch.zeros((), dtype=torch.long))

    def batch_backward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """``Pretrain``'s step, keeping the features' running mean (the features are needed
        here, where Pretrain's step consumes them)."""
        if self.classifier is None:
            raise RuntimeError("SimpleShot.setup('fit') has not run: the classifier's size is unknown")
        features = self.net.body(x)
        self.update_feature_mean(features.detach())
        out = self.classifier(features)
        loss = self.loss_fn(out, y)
        self.backward_(loss)
        return loss, out

    @torch.no_grad()
    def update_feature_mean(self, features: Tensor) -> None:
        mean = features.flatten(1).float().mean(0)
        world = self.trainer.world_size if self._trainer is not None else 1
        if world > 1:  # every rank's batch share: the whole batch's mean, the same on every rank
            all_reduce_sum_([mean])
            mean /= world
        weight = max(self.feature_momentum, 1.0 / (int(self.feature_batches) + 1))
        self.feature_mean.lerp_(mean.to(self.feature_mean.dtype), weight)
        self.feature_batches += 1

    def query_outputs(self, episode: Any, steps: int, first_order: bool, all_steps: bool = False) -> Tensor:
        return FeatureHeadLearner.query_outputs(self, episode, steps, first_order, all_steps)

    def head_logits(self, meta: dict[str, Any], fs: Tensor, sy: Tensor, fq: Tensor, ways: int, steps: int) -> Tensor:
        mean = self.feature_mean.to(fs.dtype)
        fs = F.normalize(fs.detach().flatten(1) - mean, dim=-1)  # the body is frozen at evaluation
        fq = F.normalize(fq.detach().flatten(1) - mean, dim=-1)
        y = one_hot(sy, ways, fs.dtype)
        centroids = (y.T @ fs) / y.sum(0).unsqueeze(-1)  # every class is present (episode_ways checks)
        sq_dist = fq.pow(2).sum(-1, keepdim=True) - 2 * fq @ centroids.T + centroids.pow(2).sum(-1)
        return -sq_dist.unsqueeze(0)
