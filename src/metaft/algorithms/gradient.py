"""``GradientLearner``: the learners whose tasks are solved by gradient steps of the one inner loop
(MAML, FOMAML, ANIL, BOIL, Meta-SGD, Reptile). Which parameters adapt is data (``adapt``)."""
from __future__ import annotations

from functools import partial
from typing import Any, Callable, Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

import metaft.algorithms.catalogue as catalogue
from metaft.algorithms.episodic import MetaLearner
from metaft.algorithms.carried_state import CarriedState
from metaft.core.inner_loop import Gradient, InnerOptimizer, InnerState, Params, adapt, support_batches
from metaft.models.nets import MetaNet, batched_forward, batched_gradient, per_example
from metaft.models.norm import support_statistics

Adapt = Literal["all", "head", "body"]
ADAPT = ("all", "head", "body")
STATE = ("reset", "carry")


class GradientLearner(MetaLearner):
    """MAML by default; ``first_order``, ``adapt`` and ``learn_inner_lr`` give FOMAML, ANIL
    (``head``), BOIL (``body``) and Meta-SGD.

    Args:
        adapt: which parameters the inner loop moves: ``all``; ``head`` (body features computed
            once per task, ANIL); ``body`` (the head stays at its meta-learned values within a
            task, BOIL). The others still get the meta-gradient.
        first_order: drop second-order terms of the meta-gradient.
        adapt_head_only: the older spelling of ``adapt=head``.
        learn_inner_lr: learn one step size per adapted parameter entry (Meta-SGD).
        zero_head: start every task's inner loop from a zero head instead of the meta-learned one
            (the "zeroing trick" of Kao et al. 2022). Episode labels are shuffled, so a learned
            head init can only be a class-symmetric guess; zero is that guess without its noise,
            and the first inner step then sets each class's weights from its support features.
        inner_optimizer: the inner loop's update rule in training, ``sgd`` or ``adam``
            (``core.inner_loop.InnerOptimizer``); ``eval_inner_optimizer`` at validation and test
            (None: the same).
        inner_momentum: SGD's momentum (0: plain SGD).
        inner_betas, inner_eps: Adam's.
        inner_state: ``reset``: every task starts from a fresh optimiser state; ``carry``: the
            state a task ends with is where the next task starts (in training; each evaluation
            task starts from the state training reached and leaves it as it was), as Reptile's
            reference code does. Carried state is part of the checkpoint.
        inner_batch: support examples per inner step in training (mini-batches without
            replacement, reshuffled each pass; None: the whole support set); ``eval_inner_batch``
            at validation and test (None: the same as ``inner_batch``).
        **common: ``MetaLearner``'s arguments.
    """

    has_inner_loop = True

    def __init__(self, net: MetaNet, adapt: Adapt = "all", first_order: bool = False, adapt_head_only: bool = False,
                 learn_inner_lr: bool = False, zero_head: bool = False, inner_optimizer: str = "sgd",
                 eval_inner_optimizer: str | None = None, inner_momentum: float = 0.0,
                 inner_betas: tuple[float, float] = (0.9, 0.999), inner_eps: float = 1e-8, inner_state: str = "reset",
                 inner_batch: int | None = None, eval_inner_batch: int | None = None, **common: Any) -> None:
        if adapt not in ADAPT:
            raise ValueError(f"algorithm.adapt must be one of {', '.join(ADAPT)}, got {adapt!r}")
        if adapt_head_only:
            if adapt == "body":
                raise ValueError("algorithm.adapt_head_only=true contradicts algorithm.adapt=body: drop one")
            adapt = "head"
        if zero_head and adapt == "body":
            raise ValueError("algorithm.zero_head=true with algorithm.adapt=body would leave every task's head at zero "
                             "(the body-only inner loop never moves it): set algorithm.zero_head=false")
        if common.get("eval_inner_lr") is not None and learn_inner_lr:
            raise ValueError("algorithm.eval_inner_lr is for a fixed step size; Meta-SGD learns its step sizes "
                             "(set algorithm.eval_inner_lr=null)")
        for key, size in (("inner_batch", inner_batch), ("eval_inner_batch", eval_inner_batch)):
            if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
                raise ValueError(f"algorithm.{key} must be a number of support examples >= 1, or null (the whole "
                                 f"support set), got {size!r}")
        options = dict(momentum=inner_momentum, betas=tuple(inner_betas), eps=inner_eps)
        train_opt = InnerOptimizer(inner_optimizer, **options)
        eval_opt = InnerOptimizer(eval_inner_optimizer or inner_optimizer, **options, setting="algorithm.eval_inner")
        if inner_state not in STATE:
            raise ValueError(f"algorithm.inner_state must be reset or carry, got {inner_state!r}")
        if inner_state == "carry":
            if train_opt.stateless:
                raise ValueError("algorithm.inner_state=carry: plain SGD has no state to carry; set "
                                 "algorithm.inner_optimizer=adam or algorithm.inner_momentum > 0, or inner_state=reset")
            if zero_head:
                raise ValueError("algorithm.inner_state=carry needs the same head shape in every task, but "
                                 "algorithm.zero_head=true sizes the head per episode: set one of them back")
            if str(common.get("vectorize", "auto")).lower() == "true":
                raise ValueError("algorithm.inner_state=carry passes each task's optimiser state to the next, so tasks "
                                 "are solved one after another: set algorithm.vectorize=auto or false")
        super().__init__(net=net, **common)
        self.adapt = adapt
        self.first_order = first_order
        self.zero_head = zero_head
        self.inner_optimizers = {"train": train_opt, "eval": eval_opt}
        self.inner_batch = inner_batch
        self.eval_inner_batch = inner_batch if eval_inner_batch is None else eval_inner_batch
        self.carries_state = inner_state == "carry"
        # The carried state lives in buffers (saved with the weights, restored by load_state_dict,
        # so an evaluation of the checkpoint starts where training left off).
        self.carried = CarriedState(self.adapted_names(), train_opt) if self.carries_state else None
        if common.get("joint_forward") and not self.body_fixed_per_task:
            raise ValueError(
                f"algorithm.joint_forward=true needs a body that stays fixed while a task is solved, but "
                f"{type(self).__name__} adapts the {'whole network' if adapt == 'all' else 'body'}; use it with "
                f"{catalogue.listed(catalogue.fixed_body)}"
            )
        if learn_inner_lr:
            # Keyed by the parameter's name in ``net`` (``head.weight`` when only the head adapts),
            # as fine-tuning reads them back; ParameterDict keys may not contain dots.
            self.inner_lrs = nn.ParameterDict({
                k.replace(".", "__"): nn.Parameter(torch.full_like(p, self.inner_lr))
                for k, p in self.net.named_parameters() if self.adapts(k)
            })

    # ------------------------------------------------------------- what the algorithm declares
    @property
    def sizes_head_per_episode(self) -> bool:
        # A zero head takes each episode's size; a learned head (or learned step sizes for it) has one.
        return self.zero_head and self.inner_lrs is None

    @property
    def trains_head(self) -> bool:
        return not self.zero_head

    @property
    def body_fixed_per_task(self) -> bool:
        return self.adapt == "head"

    @property
    def adapt_head_only(self) -> bool:
        return self.adapt == "head"

    def adapts(self, name: str) -> bool:
        """Whether the inner loop moves parameter ``name`` of ``net``."""
        return self.adapt == "all" or name.startswith(f"{self.adapt}.")

    def adapted_names(self) -> list[str]:
        """The names the inner loop gives the parameters it moves (the head's own names for ``adapt=head``)."""
        names = [k for k, _ in self.net.named_parameters() if self.adapts(k)]
        return [k[len("head."):] for k in names] if self.adapt == "head" else names

    def inner_settings(self) -> tuple[InnerOptimizer, int | None]:
        """(update rule, support mini-batch size) of the current phase (training or evaluation)."""
        if self.training:
            return self.inner_optimizers["train"], self.inner_batch
        return self.inner_optimizers["eval"], self.eval_inner_batch

    def inner_state(self) -> InnerState | None:
        """The state a task's inner loop starts from: the carried one in training (advanced in
        place), a copy of it at evaluation, None (fresh) when state is reset per task."""
        if self.carried is None:
            return None
        return self.carried.state if self.training else self.carried.state.copy()

    def use_vmap(self) -> bool:
        return not self.carries_state and super().use_vmap()  # carried state: one task after another

    def check_support_size(self, train: int | None, evaluation: int | None) -> None:
        """Refuse mini-batches larger than the support sets (``train``/``evaluation`` examples)."""
        for key, size, n, what in (("inner_batch", self.inner_batch, train, "meta-training"),
                                   ("eval_inner_batch", self.eval_inner_batch, evaluation, "validation and test")):
            if size is not None and n is not None and size > n:
                raise ValueError(f"algorithm.{key}={size} is larger than the {n} support examples of a {what} task: "
                                 f"lower algorithm.{key} (or null for the whole support set), or raise the dataset's shots")

    def adapted_module(self) -> nn.Module:
        return self.net.head if self.adapt == "head" else self.net

    def adapted_params(self) -> Params:
        return dict(self.adapted_module().named_parameters())

    # ------------------------------------------------------------------- one task, all tasks
    def inner_problem(
        self, meta: dict[str, Any], sx: Tensor, qx: Tensor, batched: bool = False, ways: int | None = None
    ) -> tuple[Callable, Params, Any, Tensor, Tensor, Gradient | None]:
        """What the inner loop adapts for one task: (forward, start params, step sizes, support
        inputs, query inputs, the support loss's gradient written out or ``None`` for autograd).
        With ``adapt=head`` the inputs become body features; with ``adapt=body`` the head's
        parameters are held fixed inside ``forward``.
        ``ways``: with ``zero_head``, the zero head gets this many outputs (the episode's classes,
        which may differ from the network's head: training on more ways than the test).
        ``batched``: the inputs hold all tasks (leading dimension) and ``forward`` maps all tasks at
        once: for Linear/ReLU modules as matrix products, with their backpropagation written out
        (the start parameters stay shared until the first step makes them per task); else by vmap,
        the start parameters getting one copy per task (an ``expand``, no memory)."""
        net_params, lr = meta["net"], meta["lr"]
        fixed: Params = {}
        if self.adapt == "all":
            module, start = self.net, net_params
        elif self.adapt == "body":
            module = self.net
            start = {k: v for k, v in net_params.items() if k.startswith("body.")}
            fixed = {k: v for k, v in net_params.items() if not k.startswith("body.")}
        else:
            if batched and per_example(self.net.body):  # all tasks' examples in one plain pass
                # Support rows first, then query rows: each set's features come back contiguous
                # (the head's flat product needs no copy) and the backward joins them with one cat.
                n_support = sx.shape[0] * sx.shape[1]
                f = self.features(net_params, torch.cat([sx.flatten(0, 1), qx.flatten(0, 1)]))
                fs, fq = f.split([n_support, f.shape[0] - n_support])
                sx, qx = fs.unflatten(0, sx.shape[:2]), fq.unflatten(0, qx.shape[:2])
            elif batched:  # one vmap for both sets; BatchNorm statistics stay per task (and per set)
                sx, qx = vmap(partial(self.episode_features, net_params))(sx, qx)
            else:
                sx, qx = self.episode_features(net_params, sx, qx)
            module = self.net.head
            start = {k[len("head."):]: v for k, v in net_params.items() if k.startswith("head.")}
            if isinstance(lr, dict):
                lr = {k[len("head."):]: v for k, v in lr.items()}

        if self.zero_head:  # the head's values are replaced, so it gets no meta-gradient
            prefix = "" if self.adapt == "head" else "head."
            start = {k: v.new_zeros(v.shape if ways is None else (ways, *v.shape[1:])) if k.startswith(prefix) else v
                     for k, v in start.items()}

        def forward(p: Params, x: Tensor) -> Tensor:
            return functional_call(module, {**fixed, **p} if fixed else p, (x,))

        gradient = None
        if batched:
            # Linear/ReLU models (the sinusoid MLP, ANIL's head) as batched matrix products, others vmapped.
            fast = batched_forward(module) if sx.dim() == 3 else None
            if fast is not None:  # takes the start point as it is, shared by all tasks
                forward, gradient = fast, batched_gradient(module, self.objective.gradient_kind)
                if fixed:  # the held parameters join in, shared by all tasks; only the adapted ones step
                    forward, gradient = _with_fixed(forward, fixed), _with_fixed(gradient, fixed)
            else:
                forward = vmap(forward)
                start = {k: v.expand(sx.shape[0], *v.shape) for k, v in start.items()}
        return forward, start, lr, sx, qx, gradient

    def zero_head_ways(self, sy: Tensor) -> int | None:
        """Outputs of a zero head for support labels ``sy`` (episode-local classes 0..ways-1):
        a zero head has no values to keep, so it takes each episode's own size (None: the head's)."""
        return int(sy.max()) + 1 if self.zero_head and not self.objective.regression else None

    def task_loss(self, batched: bool) -> Callable[[Tensor, Tensor], Tensor]:
        """The inner loss: one task's mean loss, or over a batch of tasks the sum of their mean
        losses, whose gradient with respect to per-task parameters is each task's own."""
        return self.objective.summed_task_loss if batched else self.loss_fn

    def solve_task(self, meta: dict[str, Any], sx: Tensor, sy: Tensor, qx: Tensor, steps: int, first_order: bool,
                   all_steps: bool, batched: bool = False) -> Tensor:
        trajectory, forward, sx, qx = self.adapt_task(meta, sx, sy, qx, steps, first_order, batched)
        if all_steps:
            return torch.stack([self.query_forward(forward, p, sx, qx, batched) for p in trajectory], dim=int(batched))
        return self.query_forward(forward, trajectory[-1], sx, qx, batched)

    def adapt_task(self, meta: dict[str, Any], sx: Tensor, sy: Tensor, qx: Tensor, steps: int, first_order: bool,
                   batched: bool) -> tuple[list[Params], Callable, Tensor, Tensor]:
        """The inner loop on one task (all tasks when ``batched``) with the phase's update rule,
        support mini-batches and optimiser state: (the trajectory of adapted parameters, the
        forward function, and the support and query inputs it takes: features for ``adapt=head``)."""
        optimizer, size = self.inner_settings()
        batches = support_batches(sx, size, steps, batched)  # keyed by the images, before any features
        forward, start, lr, sx, qx, gradient = self.inner_problem(meta, sx, qx, batched, self.zero_head_ways(sy))
        state = self.inner_state()
        trajectory = adapt(forward, start, sx, sy, self.task_loss(batched), steps, lr, first_order, gradient,
                           optimizer, state, batches)
        if state is not None and self.training:
            self.carried.keep(state)
        return trajectory, forward, sx, qx

    def query_forward(self, forward: Callable, p: Params, sx: Tensor, qx: Tensor, batched: bool) -> Tensor:
        """``forward(p, qx)``; with inductive batch norm, the query rows of a pass over support
        and queries together, normalised with the support rows' statistics (``adapt=head`` has
        its features from ``episode_features`` already)."""
        if not self.inductive or self.adapt == "head":
            return forward(p, qx)
        d, n = int(batched), sx.shape[int(batched)]
        with support_statistics(self.net, n):
            out = forward(p, torch.cat([sx, qx], d))
        return out.narrow(d, n, out.shape[d] - n)


def _with_fixed(fn: Callable[..., Any], fixed: Params) -> Callable[..., Any]:
    """``fn(params, *args)`` with ``fixed`` added to ``params`` (the adapted entries win)."""
    return lambda p, *args: fn({**fixed, **p}, *args)

