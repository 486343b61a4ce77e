"""Data parallelism for meta-learning: DDP's process group without DDP's module wrapper."""
from __future__ import annotations

import torch
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.strategies.ddp import _sync_module_states


class MetaDDPStrategy(DDPStrategy):
    """Lightning's DDP (process group, samplers, launch, checkpointing) minus the
    ``DistributedDataParallel`` wrapper.

    The wrapper's gradient hooks assume one ordinary backward per forward: they do not see
    Reptile's pseudo-gradients (written into ``.grad`` directly) and second-order graphs through
    the inner loop are a known trouble spot (pytorch#47562, #63812). The learner instead
    all-reduces its finished meta-gradient once per step (``MetaLearner.sync_meta_gradient``),
    which gives exactly the one-process update: N ranks x B/N tasks == 1 rank x B tasks.
    """

    strategy_name = "meta_ddp"

    def configure_ddp(self) -> None:
        # Same starting weights on every rank (what DDP's constructor would broadcast).
        _sync_module_states(self.model)


def all_reduce_sum_(tensors: list[torch.Tensor]) -> None:
    """Sum ``tensors`` over the ranks of the default process group, in place, with one flat
    all-reduce (one collective instead of one per tensor)."""
    if not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    torch.distributed.all_reduce(flat)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()
