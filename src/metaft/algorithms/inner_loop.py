"""THE functional inner loop, used by every gradient-based learner in train, val and test.

Nothing here touches an ``nn.Module``: parameters are plain dicts of tensors and the model is
a pure function ``forward(params, x)``. The gradient is taken with ``torch.func.grad`` so the
same code runs per task in a Python loop or under ``torch.func.vmap`` over the meta-batch, and
its result stays differentiable with respect to the starting parameters (and learned step
sizes) for the outer backward pass.
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import Tensor
from torch.func import grad

Params = dict[str, Tensor]
Forward = Callable[[Params, Tensor], Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]


def adapt(
    forward: Forward,
    params: Params,
    x: Tensor,
    y: Tensor,
    loss_fn: LossFn,
    steps: int,
    lr: float | Mapping[str, Tensor],
    first_order: bool = False,
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

    Returns:
        The trajectory ``[params_0, params_1, ..., params_steps]``; the last entry is the
        adapted model. Intermediate entries cost nothing extra: the outer graph holds them.
    """

    def support_loss(p: Params) -> Tensor:
        return loss_fn(forward(p, x), y)

    step_grad = grad(support_loss)
    trajectory = [params]
    for _ in range(steps):
        grads = step_grad(params)
        if first_order:
            grads = {k: g.detach() for k, g in grads.items()}
        if isinstance(lr, Mapping):
            params = {k: p - lr[k] * grads[k] for k, p in params.items()}
        else:
            params = {k: p - lr * grads[k] for k, p in params.items()}
        trajectory.append(params)
    return trajectory
