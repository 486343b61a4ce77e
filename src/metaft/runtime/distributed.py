"""Data parallelism for meta-learning: DDP's process group without DDP's module wrapper."""
from __future__ import annotations

import torch
import torch.distributed.nn.functional as dist_nn
from lightning.pytorch.strategies import DDPStrategy
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
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

    def _configure_launcher(self) -> None:
        # Under SLURM's srun (or torchrun) every task already is one of the ranks: spawning more
        # processes here would start world x devices of them and hang in the rendezvous. Lightning
        # skips its launcher only for start_method=popen; the spawn preset must do the same.
        if self.cluster_environment is not None and self.cluster_environment.creates_processes_externally:
            self._launcher = None
            return
        super()._configure_launcher()

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


def _world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class GlobalBatchNorm(_BatchNorm):
    """Batch norm whose training-mode statistics are those of the global batch over all
    data-parallel ranks, so N ranks sharing a batch normalise (and differentiate) as one process
    with the whole batch. torch's ``SyncBatchNorm`` does this on GPUs only; this one works on any
    device and backend (gloo included): two autograd-aware all-reduces, the sums then the centred
    squares (no cancellation). In one process, or in eval mode, it is plain batch norm.

    For batches that are split across ranks (supervised pre-training, fine-tuning); never for
    episodes, whose statistics belong to each task and never cross ranks.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or _world_size() == 1:
            return super().forward(x)
        dims = [d for d in range(x.dim()) if d != 1]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = x.new_tensor([x.numel() / x.shape[1]])
        sums = dist_nn.all_reduce(torch.cat([x.sum(dims), count]))
        n = sums[-1]
        mean = sums[:-1] / n
        centred = x - mean.view(shape)
        var = dist_nn.all_reduce((centred * centred).sum(dims)) / n  # biased, as batch norm normalises
        if self.track_running_stats:  # as nn.BatchNorm: the unbiased variance goes into the estimate
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(m * mean.detach())
                self.running_var.mul_(1 - m).add_(m * var.detach() * n / (n - 1).clamp_min(1))
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def global_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every batch-norm layer of ``module`` (in place) by a ``GlobalBatchNorm`` that shares
    its parameters and buffers: the state dict, the optimizer's parameters and checkpoints stay
    the same. Returns ``module``."""
    for name, child in module.named_children():
        if isinstance(child, _BatchNorm) and not isinstance(child, GlobalBatchNorm):
            new = GlobalBatchNorm(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            if child.affine:
                new.weight, new.bias = child.weight, child.bias
            if child.track_running_stats:
                new.running_mean, new.running_var = child.running_mean, child.running_var
                new.num_batches_tracked = child.num_batches_tracked
            new.train(child.training)
            setattr(module, name, new)
        else:
            global_batchnorm(child)
    return module
