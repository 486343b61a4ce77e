"""Models as a feature extractor ``body`` and a linear ``head``.

The split is what ANIL adapts (the head), what MetaOptNet and ProtoNet replace (the head, by
a closed-form or metric classifier), and what fine-tuning re-initialises when the number of
classes changes.
"""
from __future__ import annotations

from torch import Tensor, nn


class MetaNet(nn.Module):
    """``head(body(x))``; subclasses build ``body`` and set ``feature_dim``."""

    body: nn.Module
    head: nn.Linear
    feature_dim: int

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


class MLP(MetaNet):
    """The MAML paper's regression network: in -> hidden... -> out, ReLU between layers."""

    def __init__(self, in_features: int = 1, hidden: tuple[int, ...] = (40, 40), out_features: int = 1) -> None:
        super().__init__()
        if in_features <= 0 or out_features <= 0 or any(h <= 0 for h in hidden):
            raise ValueError(f"MLP sizes must be positive, got in={in_features} hidden={hidden} out={out_features}")
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.body = nn.Sequential(*layers)
        self.feature_dim = width
        self.head = nn.Linear(width, out_features)
