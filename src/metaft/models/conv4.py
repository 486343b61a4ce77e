"""Conv4 (Vinyals et al. 2016; the MAML paper's Omniglot/miniImageNet network)."""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from metaft.models.nets import MetaNet, ScaledL2Norm


class _Conv2d(nn.Conv2d):
    """``nn.Conv2d`` whose output is channels_last on a CPU, outside ``torch.func`` transforms.

    In that layout the BatchNorm, ReLU and max-pool after it run several times faster on a CPU
    (a 64x28x28 max-pool with indices: ~10x) and oneDNN needs no layout reorders. PyTorch infers
    the layout from the input and weight, which are ambiguous with one input channel (Omniglot)
    or after an inner-loop update, so the output is set explicitly. Under vmap (GPU meta-batches)
    memory formats cannot be queried; there the layout is left as it comes.
    """

    def forward(self, x: Tensor) -> Tensor:
        cpu = x.device.type == "cpu" and x.dim() == 4 and torch._C._functorch.peek_interpreter_stack() is None
        if cpu and x.shape[1] == 1 and x.is_contiguous():
            # One channel: the same memory read with channels_last strides (a view, no copy), so
            # oneDNN writes the output channels_last itself instead of it being copied after.
            n, _, h, w = x.shape
            x = x.view(n, h, w, 1).permute(0, 3, 1, 2)
        y = super().forward(x)
        if cpu:
            y = y.contiguous(memory_format=torch.channels_last)
        return y


def _block(cin: int, cout: int, pool: str, bn: str) -> nn.Sequential:
    stride = 2 if pool == "stride" else 1
    layers: list[nn.Module] = [_Conv2d(cin, cout, 3, stride=stride, padding=1)]
    if bn != "none":
        # transductive: always the statistics of the batch at hand (the current support or query
        # set), as in the MAML reference code; no running buffers, so vmap over tasks works.
        # inductive: the same layer; the learners normalise queries with the support set's
        # statistics (models.norm.support_statistics).
        layers.append(nn.BatchNorm2d(cout, track_running_stats=bn == "running"))
    layers.append(nn.ReLU())
    if pool == "max":
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class Conv4(MetaNet):
    """Four blocks of 3x3 conv (``filters`` channels), BatchNorm, ReLU and 2x2 max-pool (or a
    stride-2 conv), then a linear head.

    Args:
        in_channels, image_size: input shape (``[N, C, H, W]``, H = W = image_size).
        filters: channels of every block (64 in the papers).
        out_features: classes of the head (the episode's ways).
        pool: ``max`` (2x2 max-pool) or ``stride`` (stride-2 convolutions).
        bn: ``transductive`` (batch statistics always; MAML's choice: a query set is normalised
            with its own statistics), ``inductive`` (the same weights; queries normalised with the
            support set's statistics, so no query affects another's output), ``running`` (running
            statistics at eval; the learners then loop over tasks) or ``none``.
        feature_scale: ``None`` (default): the flattened features as they come; a number: each
            example's features L2-normalised, times a learned scale starting at this value
            (``ScaledL2Norm``).
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        filters: int = 64,
        out_features: int = 5,
        pool: Literal["max", "stride"] = "max",
        bn: Literal["transductive", "inductive", "running", "none"] = "transductive",
        feature_scale: float | None = None,
    ) -> None:
        super().__init__()
        if pool not in ("max", "stride"):
            raise ValueError(f"model.pool must be 'max' or 'stride', got {pool!r}")
        if bn not in ("transductive", "inductive", "running", "none"):
            raise ValueError(f"model.bn must be transductive, inductive, running or none, got {bn!r}")
        self.norm = bn
        if min(in_channels, image_size, filters, out_features) <= 0:
            raise ValueError("model sizes (in_channels, image_size, filters, out_features) must be > 0")
        if feature_scale is not None and not (isinstance(feature_scale, (int, float)) and feature_scale > 0):
            raise ValueError(f"model.feature_scale must be null or a positive number, got {feature_scale!r}")
        norm = [] if feature_scale is None else [ScaledL2Norm(feature_scale)]
        self.body = nn.Sequential(
            *(_block(in_channels if i == 0 else filters, filters, pool, bn) for i in range(4)), nn.Flatten(), *norm
        )
        size = image_size
        for _ in range(4):  # each block halves the side: floor for max-pool, ceil for stride 2
            size = size // 2 if pool == "max" else (size + 1) // 2
        if size < 1:
            raise ValueError(f"model.image_size={image_size} is too small for four 2x downsamplings")
        self.feature_dim = filters * size * size
        self.head = nn.Linear(self.feature_dim, out_features)
