"""ResNet-12 (as in TADAM, MetaOptNet and RFS): four residual blocks of widths 64-160-320-640,
each three 3x3 conv + BatchNorm (+ LeakyReLU 0.1 after the first two), a 1x1 conv + BatchNorm
shortcut, LeakyReLU after the sum, and a 2x2 max-pool; then a global average pool (or the
flattened map, as MetaOptNet) and a linear head.

A ``MetaNet`` like Conv4: every learner adapts it through ``torch.func.functional_call``, so its
forward must be a pure function of its parameters (and the batch, for transductive batch norm).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaft.models.nets import MetaNet, ScaledL2Norm

BN = Literal["transductive", "inductive", "running", "none"]


def _refuse_under_vmap(what: str) -> None:
    """vmap refuses random draws by default, and one mask per task is not what MAML's vectorized
    tasks would share anyway: say what to change instead of failing deep inside."""
    if torch._C._functorch.peek_interpreter_stack() is not None:
        raise RuntimeError(f"model.drop_rate > 0 ({what}) cannot run under torch.func.vmap: set "
                           "algorithm.vectorize=false (a loop over tasks) or model.drop_rate=0")


class DropBlock(nn.Module):
    """DropBlock (Ghiasi et al. 2018): in training, zero ``block_size`` x ``block_size`` squares so
    that about ``drop_rate`` of the map is dropped, and rescale the rest; the identity in eval.

    With ``ramp_steps`` the rate grows linearly from 0 at step 0 to ``drop_rate`` at
    ``ramp_steps`` (MetaOptNet's and RFS's schedule, which their code counts in forward passes;
    conf/model/resnet12_*.yaml turn it into steps), following the step that ``set_step`` was last
    given; before any (fine-tuning, a bare forward) it is ``drop_rate``."""

    def __init__(self, drop_rate: float, block_size: int, ramp_steps: int = 0) -> None:
        super().__init__()
        self.drop_rate, self.block_size, self.ramp_steps = drop_rate, block_size, ramp_steps
        self.step: int | None = None  # a plain attribute, not state: it follows the trainer's step

    def set_step(self, step: int) -> None:
        self.step = step

    def rate(self) -> float:
        """The drop rate at the current step."""
        if self.ramp_steps <= 0 or self.step is None:
            return self.drop_rate
        return self.drop_rate * min(1.0, self.step / self.ramp_steps)

    def forward(self, x: Tensor) -> Tensor:
        rate = self.rate()
        if not self.training or rate <= 0:
            return x
        _refuse_under_vmap("DropBlock")
        n, c, h, w = x.shape
        bs = min(self.block_size, h, w)
        gamma = rate / bs**2 * (h * w) / ((h - bs + 1) * (w - bs + 1))
        seeds = torch.bernoulli(torch.full((n, c, h - bs + 1, w - bs + 1), gamma, device=x.device, dtype=x.dtype))
        seeds = F.pad(seeds, (bs // 2, (bs - 1) // 2, bs // 2, (bs - 1) // 2))
        keep = 1 - F.max_pool2d(seeds, bs, stride=1, padding=bs // 2)[..., :h, :w]
        return x * keep * (keep.numel() / keep.sum().clamp_min(1.0))


class Dropout(nn.Dropout):
    """Ordinary dropout (the first two blocks of MetaOptNet's and RFS's ResNet-12 drop at the same
    rate, without blocks or ramp), with DropBlock's clear refusal under vmap."""

    def forward(self, x: Tensor) -> Tensor:
        if self.training and self.p > 0:
            _refuse_under_vmap("dropout")
        return super().forward(x)


def _norm(channels: int, bn: BN) -> nn.Module:
    if bn == "none":
        return nn.Identity()
    # transductive: the batch's own statistics always (no running buffers), as Conv4's default;
    # inductive: the same layer, the learners normalise queries with the support set's statistics.
    return nn.BatchNorm2d(channels, track_running_stats=bn == "running")


class ResBlock(nn.Module):
    """conv-bn-leaky, conv-bn-leaky, conv-bn, + shortcut (1x1 conv-bn), leaky, 2x2 max-pool."""

    def __init__(self, cin: int, cout: int, bn: BN, drop_rate: float = 0.0, block_size: int = 5,
                 ramp_steps: int = 0, drop_blocks: bool = True) -> None:
        super().__init__()
        bias = bn == "none"  # a bias before batch norm is cancelled by its mean
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, padding=1, bias=bias), _norm(cout, bn)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, padding=1, bias=bias), _norm(cout, bn)
        self.conv3, self.bn3 = nn.Conv2d(cout, cout, 3, padding=1, bias=bias), _norm(cout, bn)
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=bias), _norm(cout, bn))
        self.drop: nn.Module = nn.Identity()
        if drop_rate > 0:
            self.drop = DropBlock(drop_rate, block_size, ramp_steps) if drop_blocks else Dropout(drop_rate)

    def forward(self, x: Tensor) -> Tensor:
        out = F.leaky_relu(self.bn1(self.conv1(x)), 0.1)
        out = F.leaky_relu(self.bn2(self.conv2(out)), 0.1)
        out = self.bn3(self.conv3(out))
        out = F.leaky_relu(out + self.shortcut(x), 0.1)
        return self.drop(F.max_pool2d(out, 2))


class ResNet12(MetaNet):
    """Args:
        in_channels, image_size: input shape ``[N, C, S, S]``.
        channels: the four blocks' widths (64-160-320-640 in the papers; tests use tiny ones).
        out_features: outputs of the head (the episode's ways).
        bn: transductive | inductive | running | none (see Conv4).
        global_pool: average the last map to one vector (RFS), or flatten it (MetaOptNet).
        drop_rate, dropblock_size: DropBlock in the last two blocks and ordinary dropout at the same
            rate after the first two, as MetaOptNet's and RFS's code (0: none).
        dropblock_ramp_steps: grow DropBlock's rate linearly from 0 over this many training steps
            (0: the full rate from the start).
        feature_scale: ``None``, or L2-normalised features times a learned scale starting there.
    """

    def __init__(self, in_channels: int = 3, image_size: int = 84, channels: Sequence[int] = (64, 160, 320, 640),
                 out_features: int = 5, bn: BN = "transductive", global_pool: bool = True, drop_rate: float = 0.0,
                 dropblock_size: int = 5, dropblock_ramp_steps: int = 0, feature_scale: float | None = None) -> None:
        super().__init__()
        channels = [int(c) for c in channels]
        if len(channels) != 4 or min(channels) <= 0:
            raise ValueError(f"model.channels must be four positive widths, got {channels}")
        if bn not in ("transductive", "inductive", "running", "none"):
            raise ValueError(f"model.bn must be transductive, inductive, running or none, got {bn!r}")
        self.norm = bn
        if min(in_channels, image_size, out_features) <= 0:
            raise ValueError("model sizes (in_channels, image_size, out_features) must be > 0")
        if not 0 <= drop_rate < 1:
            raise ValueError(f"model.drop_rate must be in [0, 1), got {drop_rate}")
        if dropblock_ramp_steps < 0:
            raise ValueError(f"model.dropblock_ramp_steps must be >= 0 (0: no ramp), got {dropblock_ramp_steps}")
        if image_size < 16:
            raise ValueError(f"model.image_size={image_size} is too small for four 2x max-pools (at least 16)")
        if feature_scale is not None and not (isinstance(feature_scale, (int, float)) and feature_scale > 0):
            raise ValueError(f"model.feature_scale must be null or a positive number, got {feature_scale!r}")
        widths = [in_channels, *channels]
        blocks = [ResBlock(widths[i], widths[i + 1], bn, drop_rate, dropblock_size, dropblock_ramp_steps,
                           drop_blocks=i >= 2) for i in range(4)]
        size = image_size
        for _ in range(4):
            size //= 2
        pool: list[nn.Module] = [nn.AdaptiveAvgPool2d(1)] if global_pool else []
        norm = [] if feature_scale is None else [ScaledL2Norm(feature_scale)]
        self.body = nn.Sequential(*blocks, *pool, nn.Flatten(), *norm)
        self.feature_dim = channels[-1] * (1 if global_pool else size * size)
        self.head = nn.Linear(self.feature_dim, out_features)
        for m in self.modules():  # He initialisation for the leaky convolutions, as the reference code
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu", a=0.1)

    def set_training_step(self, step: int) -> None:
        for m in self.modules():
            if isinstance(m, DropBlock):
                m.set_step(step)
