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
import torch.nn.functional as F
from torch import Tensor, nn


class MetaNet(nn.Module):
    """``head(body(x))``; subclasses build ``body`` and set ``feature_dim``."""

    body: nn.Module
    head: nn.Linear
    feature_dim: int
    # How batch norm normalises at evaluation: none | transductive | inductive | running.
    norm: str = "none"

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))

    def set_training_step(self, step: int) -> None:
        """Told the meta-training step before each batch (for regularisers on a schedule, such as
        ResNet-12's DropBlock ramp); nothing by default."""


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


class ScaledL2Norm(nn.Module):
    """``x / ||x|| * scale`` per example, with ``scale`` learned (a temperature for the head).

    After one inner step from a zero head, a linear head's logits are dot products with the
    support class means, which favour classes whose features happen to be long; on the unit sphere
    the same step ranks classes by distance to their means, as ProtoNet does. The learned scale
    keeps the logits as sharp as training wants them.
    """

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(scale)))

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=-1) * self.scale


# Layers whose output for an example depends on that example alone (no batch statistics).
_PER_EXAMPLE = (nn.Linear, nn.modules.conv._ConvNd, nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.Tanh, nn.Sigmoid,
                nn.Flatten, nn.Identity, nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
                nn.LayerNorm, nn.GroupNorm, nn.Sequential, ScaledL2Norm)


_PER_EXAMPLE_CACHE: "weakref.WeakKeyDictionary[nn.Module, bool]" = weakref.WeakKeyDictionary()


def per_example(module: nn.Module) -> bool:
    """Whether ``module`` maps every example independently (only known per-example layers, no
    batch norm), so a batch of many tasks' examples can go through it in one plain call.
    Answered once per module: the inner loop asks every meta-step."""
    if module not in _PER_EXAMPLE_CACHE:
        _PER_EXAMPLE_CACHE[module] = all(isinstance(m, _PER_EXAMPLE) for m in module.modules())
    return _PER_EXAMPLE_CACHE[module]


# A Linear layer as its parameters' names (weight, bias); a ReLU as None.
Layers = tuple[tuple[str, str] | None, ...]


def _linear_layers(module: nn.Module, prefix: str = "") -> Layers | None:
    """``module``'s layers in execution order when it is built only of ``nn.Linear`` and
    ``nn.ReLU`` (through ``nn.Sequential`` and ``MetaNet``'s body-then-head), else ``None``."""
    if isinstance(module, nn.Linear):
        return ((f"{prefix}weight", f"{prefix}bias"),)
    if isinstance(module, nn.ReLU):
        return (None,)
    if isinstance(module, nn.Sequential):
        children = [_linear_layers(m, f"{prefix}{n}.") for n, m in module.named_children()]
    elif isinstance(module, MetaNet) and type(module).forward is MetaNet.forward:
        children = [_linear_layers(module.body, f"{prefix}body."), _linear_layers(module.head, f"{prefix}head.")]
    else:
        return None
    return None if any(c is None for c in children) else tuple(layer for c in children for layer in c)  # type: ignore[union-attr]


# module -> its layers (or None), built once: inner_problem asks every meta-step. Names only, so
# the cache never keeps a module alive.
_LAYERS: "weakref.WeakKeyDictionary[nn.Module, Layers | None]" = weakref.WeakKeyDictionary()


def _layers(module: nn.Module) -> Layers | None:
    if module not in _LAYERS:
        _LAYERS[module] = _linear_layers(module)
    return _LAYERS[module]


def batched_forward(module: nn.Module) -> Callable[[dict[str, Tensor], Tensor], Tensor] | None:
    """``forward(params, x)`` of ``module`` for a whole meta-batch at once: ``x`` as
    ``[tasks, N, features]``, every parameter either with a leading task dimension or shared by
    all tasks (then any leading dimensions). Built from (batched) matrix products for modules of
    Linear and ReLU layers only (MLPs, linear heads), where it does the same arithmetic as
    ``vmap(functional_call)`` in about half the time on a CPU, whose per-operator batching
    overhead dominates such small layers (``benchmarks/bench.py``). ``None`` for other modules."""
    layers = _layers(module)
    return None if layers is None else partial(_batched_call, layers)


def _batched_call(layers: Layers, params: dict[str, Tensor], x: Tensor, keep: list | None = None) -> Tensor:
    """The batched forward; ``keep`` collects every layer's input (the backward pass needs them)."""
    for layer in layers:
        if keep is not None:
            keep.append(x)
        if layer is None:
            x = torch.relu(x)
            continue
        weight, bias = params[layer[0]], params.get(layer[1])
        if weight.dim() == 2:  # shared by all tasks (the start point): one flat product for all
            x = F.linear(x, weight, bias)
        else:
            weight = weight.transpose(-1, -2)
            x = torch.bmm(x, weight) if bias is None else torch.baddbmm(bias.unsqueeze(-2), x, weight)
    return x


def batched_gradient(module: nn.Module, loss: str) -> Callable[[dict[str, Tensor], Tensor, Tensor], dict[str, Tensor]] | None:
    """``gradient(params, x, y)``: the gradient of the summed per-task mean ``loss`` (``mse`` or
    ``cross_entropy``) of ``batched_forward(module)`` with respect to every parameter, written out
    as backpropagation through the Linear and ReLU layers (``None`` for other modules). The same
    numbers as ``torch.autograd.grad`` with ``create_graph=True``, and differentiable the same way,
    but built from plain forward operators: on a CPU the inner loop of a small MLP or linear head
    otherwise spends much of its time in the autograd engine's double-backward bookkeeping
    (``benchmarks/bench.py``), and it also works under inference mode and ``torch.func`` transforms."""
    layers = _layers(module)
    return None if layers is None else partial(_batched_gradient, layers, loss)


def _batched_gradient(layers: Layers, loss: str, params: dict[str, Tensor], x: Tensor, y: Tensor) -> dict[str, Tensor]:
    inputs: list[Tensor] = []
    out = _batched_call(layers, params, x, keep=inputs)
    if loss == "mse":  # d/d out of sum_tasks mean((out - y)^2)
        delta = (out - y) * (2.0 / out[0].numel())
    else:  # d/d logits of sum_tasks mean_examples cross_entropy: (softmax - one-hot) / examples
        delta = (torch.softmax(out, -1) - F.one_hot(y, out.shape[-1]).to(out.dtype)) / out.shape[1]
    grads: dict[str, Tensor] = {}
    for i in range(len(layers) - 1, -1, -1):
        layer = layers[i]
        if layer is None:  # ReLU: pass where its output is positive (the layer after's input, or out)
            delta = torch.ops.aten.threshold_backward(delta, inputs[i + 1] if i + 1 < len(layers) else out, 0)
            continue
        # As autograd lays it out (W^T's gradient, transposed): the products of the outer backward
        # then get layouts that CPU bmm handles fast (up to 2x faster than bmm(delta^T, input)).
        grads[layer[0]] = torch.bmm(inputs[i].transpose(-1, -2), delta).transpose(-1, -2)
        if layer[1] in params:
            grads[layer[1]] = delta.sum(-2)
        if i > 0:  # the input's gradient, for the layers below
            delta = torch.matmul(delta, params[layer[0]])
    return grads
