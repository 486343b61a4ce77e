"""The task engine: solve every task of a meta-batch, vectorized (vmap or batched products) or in
a loop, and form the meta-gradient in parts. The same numbers either way (tested); which is
faster depends on the model and the device.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn
from torch.func import vmap
from torch.utils._pytree import tree_map

from metaft.data.episode import Episode


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """``requires_grad=False`` on ``module``'s parameters for the block, then as they were."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@contextmanager
def kept_buffers(module: nn.Module) -> Iterator[None]:
    """Restore ``module``'s buffers (batch norm's running statistics) after the block: for
    passes that only look, such as the training logs' second run of the inner loop."""
    saved = [(b, b.clone()) for b in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, value in saved:
                b.copy_(value)


def running_stats(net: nn.Module) -> bool:
    """Whether any normalisation layer of ``net`` keeps running statistics (``model.bn=running``):
    buffers that training updates, which a loop over tasks can do and vmap cannot."""
    return any(isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats for m in net.modules())


def has_conv(net: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.conv._ConvNd) for m in net.modules())


def vectorize_choice(setting: str, device: torch.device, conv: bool, running: bool) -> bool:
    """Vectorize over tasks? ``true``/``false`` as set; ``auto``: on accelerators always, on a CPU
    only convolution-free models (there a loop is 2-3x faster for Conv4: measured in
    benchmarks/bench.py), never for a model with running batch-norm statistics (vmap cannot
    update them per task)."""
    if setting != "auto":
        return setting == "true"
    return not running and (device.type != "cpu" or not conv)


def map_tasks(fn: Callable[..., Any], meta: dict[str, Any], episode: Episode, vectorized: bool,
              batches_itself: bool = False) -> Any:
    """Apply ``fn(meta, sx, sy, qx)`` to every task and stack the results along a leading task
    dimension. Vectorized, a ``fn`` that ``batches_itself`` is called once with all tasks
    (``batched=True``) and does its own vectorizing; any other ``fn`` runs under
    ``torch.func.vmap``. Else one call per task."""
    args = (episode.support_x, episode.support_y, episode.query_x)
    if vectorized:
        if batches_itself:
            return fn(meta, *args, batched=True)
        return vmap(fn, in_dims=(None, 0, 0, 0))(meta, *args)
    outs = [fn(meta, *(a[i] for a in args)) for i in range(episode.num_tasks)]
    return tree_map(lambda *xs: torch.stack(xs), *outs) if isinstance(outs[0], (tuple, dict)) else torch.stack(outs)


def backward_in_parts(episode: Episode, size: int, solve: Callable[[Episode], Tensor],
                      loss_fn: Callable[[Tensor, Tensor], Tensor],
                      backward: Callable[[Tensor], None]) -> tuple[Tensor, Tensor]:
    """The meta-step as one backward per ``size`` tasks (``solve``: a part's query outputs).
    Each part's graph is freed before the next is built, so peak memory is a part's instead of
    the meta-batch's (and a looped task's backward finds its activations still in cache). Every
    task has as many queries, so the parts' mean losses, weighted by their share of the tasks,
    sum to the meta-loss. Returns (meta-loss, query outputs)."""
    n = episode.num_tasks
    if size >= n:
        out = solve(episode)
        loss = loss_fn(out, episode.query_y)
        backward(loss)
        return loss, out
    outs, total = [], torch.zeros((), device=episode.query_x.device)
    for i in range(0, n, size):
        part = episode[i : i + size]
        out = solve(part)
        loss = loss_fn(out, part.query_y) / (n / part.num_tasks)
        backward(loss)
        outs.append(out.detach())
        total = total + loss.detach()
    return total, torch.cat(outs)
