"""THE functional inner loop, used by every gradient-based learner in train, val and test.

Nothing here touches an ``nn.Module``: parameters are plain dicts of tensors and the model is
a pure function ``forward(params, x)``. The result stays differentiable with respect to the
starting parameters (and learned step sizes) for the outer backward pass.

The same code serves one task or a whole meta-batch: ``MetaLearner`` passes either one task's
parameters, or parameters with a leading task dimension, a ``forward`` vmapped over tasks and a
loss summed over tasks (whose gradient is then every task's own gradient). The gradient is taken
with plain ``torch.autograd.grad``, which is faster than ``torch.func.grad`` (measured in
``benchmarks/bench.py``); under a ``torch.func`` transform, where autograd.grad is not allowed,
``torch.func.grad`` takes its place with the same result.
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import Tensor
from torch.func import grad

Params = dict[str, Tensor]
Forward = Callable[[Params, Tensor], Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]
Gradient = Callable[[Params, Tensor, Tensor], Params]


def adapt(
    forward: Forward,
    params: Params,
    x: Tensor,
    y: Tensor,
    loss_fn: LossFn,
    steps: int,
    lr: float | Mapping[str, Tensor],
    first_order: bool = False,
    gradient: Gradient | None = None,
) -> list[Params]:
    """Run ``steps`` gradient steps of ``loss_fn(forward(params, x), y)`` from ``params``.

    Args:
        forward: the model as a pure function of (params, inputs).
        params: starting point; only these entries are adapted.
        x, y: one task's support set.
        loss_fn: mean loss over the support examples.
        steps: number of inner steps (0 returns the start point).
        lr: one step size, or one tensor per parameter (Meta-SGD's learned alphas, which are
            broadcast against the gradient and receive outer gradients).
        first_order: drop the second-order terms (FOMAML, Reptile). The gradient is detached,
            so the adapted parameters depend on the start point through the identity only.
        gradient: ``gradient(params, x, y)``, the support loss's gradient written out (see
            ``metaft.models.nets.batched_gradient``); default: autograd through ``loss_fn``.

    Returns:
        The trajectory ``[params_0, params_1, ..., params_steps]``; the last entry is the
        adapted model. Intermediate entries cost nothing extra: the outer graph holds them.
    """

    def support_loss(p: Params, x: Tensor = x) -> Tensor:
        return loss_fn(forward(p, x), y)

    trajectory = [params]
    for _ in range(steps):
        if gradient is not None:
            if first_order:  # no outer graph at all
                with torch.no_grad():
                    grads = gradient(params, x, y)
            else:
                grads = gradient(params, x, y)
        elif first_order:
            # The gradient is a constant of the outer problem: take it at detached copies, so the
            # support pass records no outer graph at all (less work and memory than detaching after).
            grads = _gradient(support_loss, {k: p.detach() for k, p in params.items()}, x.detach(), create_graph=False)
        else:
            grads = _gradient(support_loss, params, x, create_graph=True)
        if isinstance(lr, Mapping):  # p - lr * g in one op (and one node of the outer graph)
            params = {k: torch.addcmul(p, lr[k], grads[k], value=-1) for k, p in params.items()}
        else:  # one fused op per parameter (also in the outer graph) instead of a mul and a sub
            params = {k: torch.add(p, grads[k], alpha=-lr) for k, p in params.items()}
        trajectory.append(params)
    return trajectory


def _gradient(loss: Callable[[Params, Tensor], Tensor], params: Params, x: Tensor, create_graph: bool) -> Params:
    """``d loss(params, x) / d params``, differentiable when ``create_graph``."""
    # Inside vmap/grad autograd.grad is not allowed; under inference_mode (Lightning's test loop)
    # it records nothing. torch.func.grad works in both.
    if torch._C._functorch.peek_interpreter_stack() is not None or torch.is_inference_mode_enabled():
        return grad(loss)(params, x)
    # Like torch.func.grad, differentiate even under no_grad (Lightning's evaluation loop), and
    # give leaves that do not require grad (detached copies, frozen tensors) a gradient too.
    with torch.enable_grad():
        params = {k: p if p.requires_grad else p.detach().requires_grad_() for k, p in params.items()}
        value = loss(params, x)
        grads = torch.autograd.grad(value, list(params.values()), create_graph=create_graph, materialize_grads=True)
    return dict(zip(params, grads))
