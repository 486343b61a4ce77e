"""Models as a feature extractor ``body`` and a linear ``head``.

The split is what ANIL adapts (the head), what MetaOptNet and ProtoNet replace (the head, by
a closed-form or metric classifier), and what fine-tuning re-initialises when the number of
classes changes.
"""
from __future__ import annotations

import weakref
from functools import partial
from typing import Callable

import torch
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


# Layers whose output for an example depends on that example alone (no batch statistics).
_PER_EXAMPLE = (nn.Linear, nn.modules.conv._ConvNd, nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.Tanh, nn.Sigmoid,
                nn.Flatten, nn.Identity, nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
                nn.LayerNorm, nn.GroupNorm, nn.Sequential)


_PER_EXAMPLE_CACHE: "weakref.WeakKeyDictionary[nn.Module, bool]" = weakref.WeakKeyDictionary()


def per_example(module: nn.Module) -> bool:
    """Whether ``module`` maps every example independently (only known per-example layers, no
    batch norm), so a batch of many tasks' examples can go through it in one plain call.
    Answered once per module: the inner loop asks every meta-step."""
    if module not in _PER_EXAMPLE_CACHE:
        _PER_EXAMPLE_CACHE[module] = all(isinstance(m, _PER_EXAMPLE) for m in module.modules())
    return _PER_EXAMPLE_CACHE[module]


def _linear_layers(module: nn.Module, prefix: str = "") -> list[tuple[str, bool]] | None:
    """``(parameter prefix, is_linear)`` of ``module``'s layers in execution order when it is built
    only of ``nn.Linear`` and ``nn.ReLU`` (through ``nn.Sequential`` and ``MetaNet``'s
    body-then-head), else ``None``."""
    if isinstance(module, (nn.Linear, nn.ReLU)):
        return [(prefix, isinstance(module, nn.Linear))]
    if isinstance(module, nn.Sequential):
        children = [_linear_layers(m, f"{prefix}{n}.") for n, m in module.named_children()]
    elif isinstance(module, MetaNet) and type(module).forward is MetaNet.forward:
        children = [_linear_layers(module.body, f"{prefix}body."), _linear_layers(module.head, f"{prefix}head.")]
    else:
        return None
    return None if any(c is None for c in children) else [layer for c in children for layer in c]  # type: ignore[union-attr]


# module -> its batched forward (or None), built once: inner_problem asks every meta-step. The
# forward holds parameter names only, so the cache never keeps a module alive.
_BATCHED: "weakref.WeakKeyDictionary[nn.Module, Callable | None]" = weakref.WeakKeyDictionary()


def batched_forward(module: nn.Module) -> Callable[[dict[str, Tensor], Tensor], Tensor] | None:
    """``forward(params, x)`` of ``module`` for a whole meta-batch at once: every parameter with a
    leading task dimension, ``x`` as ``[tasks, N, features]``. Built from batched matrix products
    (``baddbmm``) for modules of Linear and ReLU layers only (MLPs, linear heads), where it does the
    same arithmetic as ``vmap(functional_call)`` in about half the time on a CPU, whose per-operator
    batching overhead dominates such small layers (``metaft.bench``). ``None`` for other modules."""
    if module in _BATCHED:
        return _BATCHED[module]
    layers = _linear_layers(module)
    forward = None if layers is None else partial(_batched_call, layers)
    _BATCHED[module] = forward
    return forward


def _batched_call(layers: list[tuple[str, bool]], params: dict[str, Tensor], x: Tensor) -> Tensor:
    for name, linear in layers:
        if not linear:
            x = torch.relu(x)
            continue
        weight, bias = params[f"{name}weight"].transpose(-1, -2), params.get(f"{name}bias")
        x = torch.bmm(x, weight) if bias is None else torch.baddbmm(bias.unsqueeze(-2), x, weight)
    return x
