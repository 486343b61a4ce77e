"""Prototypical Networks (Snell et al. 2017): nearest class mean in the learned feature space."""
from __future__ import annotations

from typing import Any

from torch import Tensor

from metaft.algorithms.feature_head import FeatureHeadLearner, one_hot


class ProtoNet(FeatureHeadLearner):
    """Prototypes are the class means of the support features; a query's logit for class ``k``
    is minus its squared Euclidean distance to prototype ``k``. No inner loop: the evaluation
    output is a single step."""

    def head_logits(self, meta: dict[str, Any], fs: Tensor, sy: Tensor, fq: Tensor, ways: int, steps: int) -> Tensor:
        y = one_hot(sy, ways, fs.dtype)  # [S, ways]
        protos = (y.T @ fs) / y.sum(0).unsqueeze(-1)  # every class is present (episode_ways checks)
        # |q - c|^2 expanded: no [Q, ways, D] intermediate, which is large for wide features.
        sq_dist = fq.pow(2).sum(-1, keepdim=True) - 2 * fq @ protos.T + protos.pow(2).sum(-1)
        return -sq_dist.unsqueeze(0)
