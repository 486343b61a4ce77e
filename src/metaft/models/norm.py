"""Batch norm that never lets one test example change another's output (inductive).

Batch norm with batch statistics (``model.bn=transductive``, MAML's choice) normalises a query
set with its own statistics, so each query's output depends on the other queries: a
transductive evaluation, unlike scoring one image at a time. ``support_statistics`` normalises
every row with the statistics of the support set instead: pass ``cat([support, queries])``.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor, nn


@contextmanager
def support_statistics(module: nn.Module, n_support: int) -> Iterator[None]:
    """Within the block, every batch-statistics BatchNorm of ``module`` normalises all rows of its
    input with the mean and (biased) variance of the first ``n_support`` rows: pass
    ``cat([support, queries])`` and the support rows come out as in training, each query as if
    it were normalised alone with the support's statistics. (Layers with running statistics are
    left alone.) Works under ``functional_call`` (the layer's weights are read at call time)
    and ``vmap``."""
    patched = []
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not m.track_running_stats:
            def forward(x: Tensor, m: nn.modules.batchnorm._BatchNorm = m) -> Tensor:
                dims = [0, *range(2, x.dim())]
                shape = [1, -1] + [1] * (x.dim() - 2)
                s = x[:n_support]
                mean, var = s.mean(dims), s.var(dims, unbiased=False)
                # x * scale + shift in one fused op: the elementwise passes over a large query
                # batch, not the statistics, are what this layer costs.
                scale = torch.rsqrt(var + m.eps)
                if m.affine:
                    scale = scale * m.weight
                shift = -mean * scale + (m.bias if m.affine else 0)
                return torch.addcmul(shift.view(shape), x, scale.view(shape))
            m.forward = forward  # an instance attribute: nn.Module.__call__ finds it first
            patched.append(m)
    try:
        yield
    finally:
        for m in patched:
            del m.forward
