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

The update rule is an option (``InnerOptimizer``): plain SGD (the default, and the only rule with
no state), SGD with momentum, or Adam, each with torch.optim's arithmetic written as pure
functions; the optimiser's state starts afresh for every task or is carried from one task to the
next (``InnerState``, as Reptile's reference code does). Each step may see a mini-batch of the
support set (``batches``) instead of all of it.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor
from torch.func import grad

Params = dict[str, Tensor]
Forward = Callable[[Params, Tensor], Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]
Gradient = Callable[[Params, Tensor, Tensor], Params]
StepSize = float | Mapping[str, Tensor]

OPTIMIZERS = ("sgd", "adam")


@dataclass
class InnerState:
    """An inner optimiser's state: its step count and one tensor per parameter for each slot
    (``momentum``; Adam's ``exp_avg`` and ``exp_avg_sq``). ``adapt`` advances it in place, so a
    learner that carries state from task to task passes the same object again."""

    step: int = 0
    slots: dict[str, Params] = field(default_factory=dict)

    def detached(self) -> "InnerState":
        """The same values cut from any autograd graph (carried on without the last task's graph)."""
        return InnerState(self.step, {k: {n: t.detach() for n, t in v.items()} for k, v in self.slots.items()})

    def copy(self) -> "InnerState":
        return InnerState(self.step, {k: dict(v) for k, v in self.slots.items()})


@dataclass(frozen=True)
class InnerOptimizer:
    """The inner loop's update rule, with torch.optim's arithmetic (``SGD`` without dampening or
    weight decay; ``Adam`` without amsgrad or weight decay), as pure functions of tensors so the
    adapted parameters stay differentiable with respect to the start point.

    Args:
        name: ``sgd`` or ``adam``.
        momentum: SGD's heavy-ball momentum (0: plain SGD, which keeps no state).
        betas: Adam's decay rates of its first and second moment estimates.
        eps: Adam's term added to the denominator.
        setting: the config prefix named in error messages.
    """

    name: str = "sgd"
    momentum: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    setting: str = "algorithm.inner"

    def __post_init__(self) -> None:
        s = self.setting
        if self.name not in OPTIMIZERS:
            raise ValueError(f"{s}_optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.name!r}")
        if isinstance(self.momentum, bool) or not 0 <= float(self.momentum) < 1:
            raise ValueError(f"{s}_momentum must be in [0, 1), got {self.momentum!r}")
        if self.momentum and self.name != "sgd":
            raise ValueError(f"{s}_momentum={self.momentum} is SGD's; Adam's moments are set by {s}_betas: "
                             f"set {s}_momentum=0.0, or {s}_optimizer=sgd")
        betas = tuple(self.betas)
        if len(betas) != 2 or any(isinstance(b, bool) or not 0 <= float(b) < 1 for b in betas):
            raise ValueError(f"{s}_betas must be two numbers in [0, 1) (Adam's decay rates), got {list(self.betas)!r}")
        object.__setattr__(self, "betas", (float(betas[0]), float(betas[1])))
        if not float(self.eps) > 0:
            raise ValueError(f"{s}_eps must be > 0, got {self.eps!r}")

    @property
    def stateless(self) -> bool:
        """Plain SGD: nothing to reset or carry."""
        return self.name == "sgd" and not self.momentum

    def update(self, params: Params, grads: Params, lr: StepSize, state: InnerState) -> Params:
        """One step from ``params`` with gradient ``grads``; advances ``state``."""
        state.step += 1
        if self.name == "sgd":
            if self.momentum:  # torch.optim.SGD: buf = momentum * buf + g (buf = g at the first step)
                old = state.slots.get("momentum", {})
                grads = {k: g if k not in old else torch.add(g, old[k], alpha=self.momentum) for k, g in grads.items()}
                state.slots["momentum"] = grads
            return _descend(params, grads, lr)
        b1, b2 = self.betas
        m_old, v_old = state.slots.get("exp_avg", {}), state.slots.get("exp_avg_sq", {})
        m = {k: g * (1 - b1) if k not in m_old else torch.lerp(m_old[k], g, 1 - b1) for k, g in grads.items()}
        v = {k: g * g * (1 - b2) if k not in v_old else torch.addcmul(v_old[k] * b2, g, g, value=1 - b2)
             for k, g in grads.items()}
        state.slots["exp_avg"], state.slots["exp_avg_sq"] = m, v
        bias1, bias2 = 1 - b1**state.step, math.sqrt(1 - b2**state.step)
        # d sqrt(v) / dv is infinite at v = 0 (a parameter whose gradient is exactly 0): under a
        # second-order graph that would give 0 * inf = NaN; the smallest normal number added
        # there keeps the derivative finite and changes no value.
        direction = {k: m[k] / ((v[k] + torch.finfo(v[k].dtype).tiny if v[k].requires_grad else v[k]).sqrt() / bias2
                                + self.eps) for k in grads}
        if isinstance(lr, Mapping):
            return {k: torch.addcmul(p, lr[k], direction[k], value=-1 / bias1) for k, p in params.items()}
        return {k: torch.add(p, direction[k], alpha=-lr / bias1) for k, p in params.items()}


SGD = InnerOptimizer()


def _descend(params: Params, grads: Params, lr: StepSize) -> Params:
    """``p - lr * g`` for every parameter."""
    if isinstance(lr, Mapping):  # p - lr * g in one op (and one node of the outer graph)
        return {k: torch.addcmul(p, lr[k], grads[k], value=-1) for k, p in params.items()}
    # One fused op per parameter (also in the outer graph) instead of a mul and a sub.
    return {k: torch.add(p, grads[k], alpha=-lr) for k, p in params.items()}


def batch_indices(n: int, size: int, steps: int, generator: torch.Generator) -> Tensor:
    """``[steps, size]`` indices into a support set of ``n`` examples: mini-batches drawn without
    replacement from a shuffled order, reshuffled each time the set runs out (a batch may span
    two passes), as Reptile's reference code draws them."""
    passes = -(-steps * size // n)
    order = torch.cat([torch.randperm(n, generator=generator) for _ in range(passes)])
    return order[: steps * size].view(steps, size)


def content_generator(x: Tensor) -> torch.Generator:
    """A generator seeded by the bytes of ``x``: a task's support set gets the same mini-batches
    whatever batch, rank or run it is solved in (its episode is fixed by its seed)."""
    data = x.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    seed = int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1
    return torch.Generator().manual_seed(seed)


def support_batches(x: Tensor, size: int | None, steps: int, batched: bool) -> Tensor | None:
    """Mini-batch indices for ``steps`` inner steps on support inputs ``x`` (``[N, ...]``, or
    ``[tasks, N, ...]`` when ``batched``): ``[steps, size]`` (``[tasks, steps, size]``), or None for
    full-batch steps (``size`` None or the whole set)."""
    n = x.shape[int(batched)]
    if size is not None and size > n:
        raise ValueError(f"algorithm.inner_batch / eval_inner_batch = {size} is larger than the support set ({n} "
                         "examples): lower it, or null for the whole support set")
    if size is None or size >= n or steps == 0:
        return None
    tasks: Sequence[Tensor] = x if batched else [x]
    idx = torch.stack([batch_indices(n, size, steps, content_generator(t)) for t in tasks]).to(x.device)
    return idx if batched else idx[0]


def _select(x: Tensor, y: Tensor, batches: Tensor, i: int) -> tuple[Tensor, Tensor]:
    """Step ``i``'s mini-batch of one task (``batches [steps, b]``) or of every task (``[tasks, steps, b]``)."""
    if batches.dim() == 2:
        return x[batches[i]], y[batches[i]]
    rows = torch.arange(batches.shape[0], device=batches.device)[:, None]
    return x[rows, batches[:, i]], y[rows, batches[:, i]]


def adapt(
    forward: Forward,
    params: Params,
    x: Tensor,
    y: Tensor,
    loss_fn: LossFn,
    steps: int,
    lr: StepSize,
    first_order: bool = False,
    gradient: Gradient | None = None,
    optimizer: InnerOptimizer = SGD,
    state: InnerState | None = None,
    batches: Tensor | None = None,
) -> list[Params]:
    """Run ``steps`` optimiser steps of ``loss_fn(forward(params, x), y)`` from ``params``.

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
        optimizer: the update rule (default: plain SGD).
        state: the optimiser's state to start from, advanced in place (a learner carrying state
            from task to task passes it); None: a fresh state for this call.
        batches: ``support_batches``'s indices: step ``i`` sees the support examples
            ``batches[i]`` (``batches[:, i]`` per task when tasks are batched); None: all of them.

    Returns:
        The trajectory ``[params_0, params_1, ..., params_steps]``; the last entry is the
        adapted model. Intermediate entries cost nothing extra: the outer graph holds them.
    """

    def support_loss(p: Params, xb: Tensor, yb: Tensor) -> Tensor:
        return loss_fn(forward(p, xb), yb)

    state = InnerState() if state is None else state
    trajectory = [params]
    for i in range(steps):
        xb, yb = (x, y) if batches is None else _select(x, y, batches, i)
        if gradient is not None:
            if first_order:  # no outer graph at all
                with torch.no_grad():
                    grads = gradient(params, xb, yb)
            else:
                grads = gradient(params, xb, yb)
        elif first_order:
            # The gradient is a constant of the outer problem: take it at detached copies, so the
            # support pass records no outer graph at all (less work and memory than detaching after).
            grads = _gradient(support_loss, {k: p.detach() for k, p in params.items()}, xb.detach(), yb, False)
        else:
            grads = _gradient(support_loss, params, xb, yb, True)
        params = _descend(params, grads, lr) if optimizer.stateless else optimizer.update(params, grads, lr, state)
        trajectory.append(params)
    return trajectory


def _gradient(loss: Callable[[Params, Tensor, Tensor], Tensor], params: Params, x: Tensor, y: Tensor,
              create_graph: bool) -> Params:
    """``d loss(params, x, y) / d params``, differentiable when ``create_graph``."""
    # Inside vmap/grad autograd.grad is not allowed; under inference_mode (Lightning's test loop)
    # it records nothing. torch.func.grad works in both.
    if torch._C._functorch.peek_interpreter_stack() is not None or torch.is_inference_mode_enabled():
        return grad(loss)(params, x, y)
    # Like torch.func.grad, differentiate even under no_grad (Lightning's evaluation loop), and
    # give leaves that do not require grad (detached copies, frozen tensors) a gradient too.
    with torch.enable_grad():
        params = {k: p if p.requires_grad else p.detach().requires_grad_() for k, p in params.items()}
        value = loss(params, x, y)
        grads = torch.autograd.grad(value, list(params.values()), create_graph=create_graph, materialize_grads=True)
    return dict(zip(params, grads))
