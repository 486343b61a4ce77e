"""Cosine-similarity classifiers, shared by a learner (Baseline++ pre-training) and the study's
probes on frozen features (``metaft.algorithms.probes``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def cosine_logits(f: Tensor, weight: Tensor, scale: Tensor | float) -> Tensor:
    """Baseline++: ``scale * cos(f_q, w_c)`` for features ``f [..., Q, D]`` and class weights
    ``weight [..., ways, D]`` (leading dimensions broadcast)."""
    return scale * F.normalize(f, dim=-1) @ F.normalize(weight, dim=-1).transpose(-1, -2)


class CosineClassifier(nn.Module):
    """Baseline++'s head as a module: one weight vector per class and a scale (the temperature of
    the softmax over cosines), learned when ``learn_scale`` (else a fixed buffer, as in Chen et
    al. 2019; either way it is saved with the weights)."""

    def __init__(self, in_features: int, out_features: int, scale: float = 10.0, learn_scale: bool = True) -> None:
        super().__init__()
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)  # nn.Linear's initialisation
        value = torch.tensor(float(scale))
        if learn_scale:
            self.scale = nn.Parameter(value)
        else:
            self.register_buffer("scale", value)

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def forward(self, f: Tensor) -> Tensor:
        return cosine_logits(f, self.weight, self.scale)
