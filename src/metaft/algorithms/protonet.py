"""Prototypical Networks (Snell et al. 2017): nearest class mean in the learned feature space; with
``distance=cosine`` and a pre-trained body (``init_ckpt``), Meta-Baseline's meta-stage (Chen et al. 2021)."""
from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from metaft.algorithms.episodic import check_positive
from metaft.algorithms.feature_head import FeatureHeadLearner, one_hot
from metaft.algorithms.warm_start import load_init_body
from metaft.models.heads import cosine_logits

Distance = Literal["euclidean", "cosine"]


class ProtoNet(FeatureHeadLearner):
    """Prototypes are the class means of the support features. ``euclidean``: a query's logit for
    class ``k`` is minus its squared Euclidean distance to prototype ``k``; ``cosine``: its cosine
    similarity to prototype ``k`` times a learned scale (Meta-Baseline). No inner loop: the
    evaluation output is a single step.

    Args:
        distance: ``euclidean`` (ProtoNet) or ``cosine`` (Meta-Baseline).
        scale_init: initial value of the learned scale of the cosine logits (Meta-Baseline: 10);
            only with ``distance=cosine`` (null there means 10).
        init_ckpt: a stage-1 checkpoint (e.g. of ``pretrain`` or ``baselinepp``) whose body the
            learner starts from; ``None`` trains from scratch. Meta-Baseline proper sets it.
        **kwargs: ``MetaLearner``'s arguments (optimizer, vectorize, ...).
    """

    def __init__(self, distance: Distance = "euclidean", scale_init: float | None = None,
                 init_ckpt: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if distance not in ("euclidean", "cosine"):
            raise ValueError(f"algorithm.distance must be 'euclidean' (ProtoNet) or 'cosine' (Meta-Baseline), got {distance!r}")
        if distance == "euclidean" and scale_init is not None:
            raise ValueError("algorithm.scale_init scales cosine similarities: set algorithm.distance=cosine "
                             "(algorithm=metabaseline), or algorithm.scale_init=null")
        self.distance = distance
        self.scale: nn.Parameter | None = None
        if distance == "cosine":
            scale_init = 10.0 if scale_init is None else float(scale_init)
            check_positive(scale_init=scale_init)
            # A learned temperature: cosines lie in [-1, 1], too flat a softmax without one.
            self.scale = nn.Parameter(torch.tensor(scale_init))
        self.init_ckpt = init_ckpt
        if init_ckpt:
            load_init_body(self.net, init_ckpt)

    def meta_params(self) -> dict[str, Any]:
        meta = super().meta_params()
        return meta if self.scale is None else {**meta, "scale": self.scale}

    def head_logits(self, meta: dict[str, Any], fs: Tensor, sy: Tensor, fq: Tensor, ways: int, steps: int) -> Tensor:
        y = one_hot(sy, ways, fs.dtype)  # [S, ways]
        protos = (y.T @ fs) / y.sum(0).unsqueeze(-1)  # every class is present (episode_ways checks)
        if self.distance == "cosine":
            return cosine_logits(fq, protos, meta["scale"]).unsqueeze(0)
        # |q - c|^2 expanded: no [Q, ways, D] intermediate, which is large for wide features.
        sq_dist = fq.pow(2).sum(-1, keepdim=True) - 2 * fq @ protos.T + protos.pow(2).sum(-1)
        return -sq_dist.unsqueeze(0)
