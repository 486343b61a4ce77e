"""``FeatureHeadLearner``: what ProtoNet, MetaOptNet and supervised pre-training share.

Each classifies body features with a head built afresh for every episode from its support set
(class means, a convex classifier, or a linear head fitted by the inner loop), instead of
adapting the network's weights. They are classification-only and have no inner loop in training.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable

import torch
from omegaconf import ListConfig
from torch import Tensor
from torch.func import vmap

import metaft.algorithms.catalogue as catalogue
from metaft.core.objective import Objective
from metaft.algorithms.episodic import MetaLearner
from metaft.data.episode import Episode
from metaft.models.nets import MetaNet


def one_hot(y: Tensor, ways: int, dtype: torch.dtype) -> Tensor:
    """``[..., ways]`` indicator of ``y``. ``F.one_hot`` checks its input's range, which is
    data-dependent control flow that vmap refuses; the range is checked before vmap instead."""
    return (y.unsqueeze(-1) == torch.arange(ways, device=y.device)).to(dtype)


# The gradient learners' inner-loop options (GradientLearner's arguments).
INNER_LOOP_OPTIONS = ("first_order", "zero_head", "learn_inner_lr", "adapt_head_only", "adapt")
# Their inner optimiser's options, with the values that leave the plain full-batch SGD loop.
INNER_OPTIMIZER_DEFAULTS = {"inner_optimizer": "sgd", "eval_inner_optimizer": None, "inner_momentum": 0.0,
                            "inner_betas": [0.9, 0.999], "inner_eps": 1e-8, "inner_state": "reset",
                            "inner_batch": None, "eval_inner_batch": None}


def _listed(value: Any) -> Any:
    """A config list (ListConfig, tuple) as a plain list, for comparison with a default."""
    return list(value) if isinstance(value, (list, tuple, ListConfig)) else value


class FeatureHeadLearner(MetaLearner):
    """A learner whose per-episode head acts on body features (``net.head`` is not used).

    ``ways`` is read off each meta-batch's labels before vmap, so inside it is a plain int; it
    may differ between training and evaluation (e.g. ProtoNet's higher-way training).
    Subclasses implement ``head_logits``. ``inner_steps`` must be 0 (no inner loop in training);
    ``eval_inner_steps`` too unless the head is fitted by gradient steps (``fits_head_at_eval``).
    ``joint_forward`` (``MetaLearner``'s) passes a task's support and query images through the
    body in one batch, as the Prototypical Networks reference code does; the ProtoNet and
    MetaOptNet configs leave it off (it scored lower on validation episodes with transductive batch
    norm), pre-training's turns it on for evaluation.
    """

    fits_head_at_eval: bool = False
    regresses = False
    head_per_episode = True
    # Their rule is nearest class mean (or a head fitted to the support features); the linear form
    # of the nearest-prototype rule is the closest start for the head they never trained.
    untrained_head_start = "prototypes"

    def __init__(self, net: MetaNet, task: str = "classification", inner_steps: int = 0,
                 eval_inner_steps: int | None = None, **kwargs: Any) -> None:
        name = type(self).__name__
        if Objective(task).regression:
            raise ValueError(
                f"algorithm {name} is for classification only, but the dataset is a {task} task: choose a "
                f"classification dataset (e.g. dataset=omniglot), or an algorithm that also regresses "
                f"({catalogue.listed(catalogue.regresses)})"
            )
        if inner_steps:
            raise ValueError(f"algorithm {name} has no inner loop in training: set algorithm.inner_steps=0 (got {inner_steps})")
        # Options of the gradient inner loop (conf/algorithm/_base/inner_loop.yaml, which these
        # learners' configs do not include): here they would do nothing, or fail at the first
        # evaluation after the training time is spent. Their unset values are accepted, as the
        # stored configs of checkpoints written when every config included them hold them.
        inert = [k for k in INNER_LOOP_OPTIONS if kwargs.get(k) and not (k == "adapt" and kwargs[k] == "all")]
        if inert:
            raise ValueError(
                f"algorithm {name} fits its head from fixed features, with no meta-learned inner loop for "
                f"{', '.join(f'algorithm.{k}' for k in inert)} to change: set {' and '.join(f'algorithm.{k}=false' for k in inert)} "
                "(or drop the override that set it)"
            )
        for k in INNER_LOOP_OPTIONS:  # unset (false) here: nothing to pass on
            kwargs.pop(k, None)
        changed = [k for k, v in INNER_OPTIMIZER_DEFAULTS.items() if k in kwargs and _listed(kwargs.pop(k)) != v]
        if changed:
            raise ValueError(
                f"algorithm {name} fits its head with its own rule, not the gradient learners' inner optimiser: drop "
                f"{', '.join(f'algorithm.{k}' for k in changed)} (back to {', '.join(f'{k}={INNER_OPTIMIZER_DEFAULTS[k]}' for k in changed)})"
            )
        if eval_inner_steps and not self.fits_head_at_eval:
            raise ValueError(
                f"algorithm {name} has no inner loop at evaluation either: set algorithm.eval_inner_steps "
                f"to 0 or null (got {eval_inner_steps})"
            )
        super().__init__(net=net, task=task, inner_steps=0, eval_inner_steps=eval_inner_steps, **kwargs)

    @property
    def body_fixed_per_task(self) -> bool:
        return True

    @property
    def sizes_head_per_episode(self) -> bool:
        return True

    def head_logits(self, meta: dict[str, Any], fs: Tensor, sy: Tensor, fq: Tensor, ways: int, steps: int) -> Tensor:
        """Query logits ``[steps+1, Q, ways]`` (one entry per head-fitting step; ``[1, Q, ways]``
        for closed-form heads) from support features ``fs [S, D]``, labels ``sy [S]`` and query
        features ``fq [Q, D]``."""
        raise NotImplementedError

    def solve_task(self, meta: dict[str, Any], sx: Tensor, sy: Tensor, qx: Tensor, steps: int, first_order: bool,
                   all_steps: bool, ways: int | None = None) -> Tensor:
        if ways is None:  # only outside vmap; query_outputs passes the checked value
            ways = int(sy.max()) + 1
        fs, fq = self.episode_features(meta["net"], sx, qx)
        out = self.precise_head(self.head_logits)(meta, fs, sy, fq, ways, steps)
        return out if all_steps else out[-1]

    @staticmethod
    def precise_head(head: Callable[..., Tensor]) -> Callable[..., Tensor]:
        """``head(meta, fs, sy, fq, ...)`` in at least float32 with autocast off: under mixed
        precision the body may run in half precision, but linear solves have no half kernels and
        bfloat16 distances or Gram matrices lose the differences that matter (cheap: the head is
        tiny next to the body)."""

        def run(meta: dict[str, Any], fs: Tensor, sy: Tensor, fq: Tensor, *args: Any, **kwargs: Any) -> Tensor:
            dtype = torch.promote_types(fs.dtype, torch.float32)
            with torch.autocast(fs.device.type, enabled=False):
                return head(meta, fs.to(dtype), sy, fq.to(dtype), *args, **kwargs)

        return run

    def meta_backward(self, episode: Episode) -> tuple[Tensor, Tensor]:
        # Check the labels whatever route the outer step takes to the tasks: a missing class would
        # otherwise surface as a NaN loss blamed on the step size.
        self.episode_ways(episode)
        return super().meta_backward(episode)

    def query_outputs(self, episode: Episode, steps: int, first_order: bool, all_steps: bool = False) -> Tensor:
        """``solve_task`` for every task, in two stages: body features task by task (vmapped or
        looped, as ``vectorize`` says), then the head for all tasks under vmap. The head has no
        convolutions, and looping its many small operations (the SVM solver's iterations, the
        pre-training head's steps) costs more than the body on a CPU (benchmarks/heads_timing.py)."""
        ways, meta, fs, fq = self.task_features(episode)
        head = partial(self.head_logits, ways=ways, steps=steps)
        out = self.precise_head(vmap(head, in_dims=(None, 0, 0, 0)))(meta, fs, episode.support_y, fq)
        return out if all_steps else out[:, -1]

    def task_features(self, episode: Episode) -> tuple[int, dict[str, Any], Tensor, Tensor]:
        """``(ways, meta-parameters, support features [tasks, S, D], query features [tasks, Q, D])``,
        the body run task by task (vmapped or looped, as ``vectorize`` says)."""
        ways, meta = self.episode_ways(episode), self.meta_params()

        def features(m: dict[str, Any], sx: Tensor, sy: Tensor, qx: Tensor) -> tuple[Tensor, Tensor]:
            return self.episode_features(m["net"], sx, qx)

        fs, fq = self.map_tasks(features, meta, episode)
        return ways, meta, fs, fq

    @staticmethod
    def episode_ways(episode: Episode) -> int:
        """The number of classes of a meta-batch, checked: labels in ``[0, ways)`` and every class
        in every task's support set (an empty class has no prototype or support vector)."""
        sy, qy = episode.support_y, episode.query_y
        if sy.is_floating_point() or qy.is_floating_point():
            raise ValueError("classification episodes need integer labels; got floating-point support_y/query_y")
        lo, ways = int(torch.minimum(sy.min(), qy.min())), int(torch.maximum(sy.max(), qy.max())) + 1
        present = one_hot(sy.clamp_min(0), ways, torch.bool).any(-2)  # [tasks, ways]
        if lo < 0 or not bool(present.all()):
            raise ValueError(
                f"episode labels must be episode-local classes 0..ways-1 with every class in every support "
                f"set; got labels in [{lo}, {ways - 1}] and {int((~present).sum())} (task, class) pairs with "
                "no support example. Fix the dataset's sample()"
            )
        return ways
