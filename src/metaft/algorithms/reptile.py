"""Reptile (Nichol et al. 2018): first-order inner loop, outer step towards the adapted weights."""
from __future__ import annotations

from typing import Any

from torch import Tensor
from torch.utils._pytree import tree_map

from metaft.algorithms.gradient import GradientLearner
from metaft.data.episode import Episode


class Reptile(GradientLearner):
    """theta <- theta + eps * mean_tasks(phi - theta), handed to the configured optimizer as the
    pseudo-gradient ``theta - mean(phi)`` (plain SGD with lr=eps is the paper's update), so
    schedulers, clipping and checkpointing work as for every other learner. Evaluation adapts on
    the support set and scores the query set like the others."""

    def __init__(self, first_order: bool = True, **kwargs: Any) -> None:
        if not first_order:
            raise ValueError("Reptile's update uses the adapted weights only, so it has no second-order gradient to "
                             "take: drop algorithm.first_order=false (its config sets true), or use algorithm=maml")
        if kwargs.get("inner_steps", 1) < 1:  # zero steps: phi = theta, an update of nothing
            raise ValueError(f"Reptile moves towards the adapted weights: algorithm.inner_steps must be >= 1, "
                             f"got {kwargs['inner_steps']}")
        if kwargs.get("learn_inner_lr"):
            raise ValueError("Reptile's update gives learned step sizes no gradient (they would stay at algorithm.inner_lr): "
                             "drop +algorithm.learn_inner_lr=true (or set it false), or use algorithm=metasgd")
        if kwargs.get("adapt_head_only") or kwargs.get("adapt", "all") != "all":
            raise ValueError("Reptile moves the start point towards the adapted weights, so with only the head adapted the "
                             "body would keep its random initialisation: drop +algorithm.adapt_head_only=true (or set it "
                             "false), or use algorithm=anil")
        super().__init__(first_order=True, **kwargs)

    def meta_backward(self, episode: Episode) -> tuple[Tensor, Tensor]:
        def adapted(meta: dict[str, Any], sx: Tensor, sy: Tensor, qx: Tensor, batched: bool = False) -> tuple[dict, Tensor]:
            trajectory, forward, sx, qx = self.adapt_task(meta, sx, sy, qx, self.inner_steps, True, batched)
            return trajectory[-1], self.query_forward(forward, trajectory[-1], sx, qx, batched)

        # No outer graph: Reptile's update needs only the adapted weights.
        meta = tree_map(lambda t: t.detach() if isinstance(t, Tensor) else t, self.meta_params())
        phi, out = self.map_tasks(adapted, meta, episode, batches_itself=True)
        loss = self.loss_fn(out, episode.query_y)
        for name, p in self.adapted_module().named_parameters():
            if self.zero_head and name.startswith("head."):  # replaced by zeros per task: no update
                continue
            p.grad = p.detach() - phi[name].mean(0)
        return loss, out
