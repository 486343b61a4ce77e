"""``MetaLearner``: the outer loop, metrics and logging shared by every algorithm.

Subclasses say only what differs: how one task is solved (``solve_task``) and, for Reptile,
how the meta-gradient is formed (``meta_backward``).
"""
from __future__ import annotations

from contextlib import contextmanager
from functools import partial
from typing import Any, Callable, Iterator, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap
from torch.utils._pytree import tree_map

from metaft.core.inner_loop import Gradient, Params, adapt
from metaft.core.errors import NonFiniteLossError
from metaft.data.episode import Episode
from metaft.models.nets import MetaNet, batched_forward, batched_gradient, per_example
from metaft.runtime.distributed import all_reduce_sum_
from metaft.core.metrics import EpisodeStats

Task = Literal["regression", "classification"]
OptimizerFactory = Callable[..., torch.optim.Optimizer]


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


def _check_positive(**values: float) -> None:
    for name, v in values.items():
        if v is None or not (v > 0):
            raise ValueError(f"algorithm.{name} must be > 0, got {v}")


class MetaLearner(L.LightningModule):
    """Gradient-based meta-learner: MAML by default (``first_order``, ``adapt_head_only`` and
    ``learn_inner_lr`` turn it into FOMAML, ANIL and Meta-SGD).

    Args:
        net: the model (a ``MetaNet``: ``body`` then ``head``).
        task: ``regression`` (MSE) or ``classification`` (cross-entropy, accuracy in percent).
        inner_lr: inner-loop step size (Meta-SGD: the initial value of every learned alpha).
        inner_steps: inner steps in meta-training.
        eval_inner_steps: inner steps at validation and test (default: ``inner_steps``).
        eval_inner_lr: step size at validation and test (default: ``inner_lr``). With the mean
            loss over the support set, a step's change per class scales as 1 / (ways * shots), so a
            model meta-trained on more ways than it is tested on (``dataset.train_ways``) keeps its
            per-class step with ``inner_lr = eval_inner_lr * train_ways / ways``.
        first_order: drop second-order terms of the meta-gradient.
        adapt_head_only: adapt only ``net.head``; body features are computed once per task.
        learn_inner_lr: learn one step size per parameter entry (Meta-SGD).
        joint_forward: compute a task's support and query features in one body pass, so
            batch-norm statistics are the whole episode's rather than each set's (the 5 images of a
            5-way 1-shot support set make noisy statistics), in one pass instead of two. Only for
            learners whose body is fixed while a task is solved (ANIL, ProtoNet, MetaOptNet,
            pre-training); MAML-style learners adapt the body, so their query pass needs the
            adapted weights.
        zero_head: start every task's inner loop from a zero head instead of the meta-learned one
            (the "zeroing trick" of Kao et al. 2022). Episode labels are shuffled, so a learned
            head init can only be a class-symmetric guess; zero is that guess without its noise,
            and the first inner step then sets each class's weights from its support features.
        vectorize: ``true`` vmaps over the tasks of a meta-batch, ``false`` loops over them,
            ``auto`` vmaps on accelerators and for convolution-free models (on a CPU, vmap over
            convolutions is slower than a loop), and loops for models with running batch-norm
            statistics (``model.bn=running``), which vmap cannot update per task.
        task_chunk: on the vectorized path, solve the meta-batch this many tasks at a time, each
            chunk's graph freed by its backward before the next is built (the same meta-gradient).
            Peak memory then scales with the chunk instead of the meta-batch, at the cost of
            per-chunk overhead; ``None``: all tasks at once. (The loop path already frees each
            task's graph; Reptile keeps no outer graph.)
        optimizer: outer optimizer factory (``params -> Optimizer``).
        scheduler: optional LR scheduler factory (stepped every meta-step).
        grad_clip: clip the meta-gradient's global norm (``0`` disables).
        nonfinite: ``raise`` stops on a NaN/Inf loss; ``skip`` drops that meta-step.
    """

    def __init__(
        self,
        net: MetaNet,
        task: Task = "regression",
        inner_lr: float = 0.01,
        inner_steps: int = 1,
        eval_inner_steps: int | None = None,
        eval_inner_lr: float | None = None,
        first_order: bool = False,
        adapt_head_only: bool = False,
        learn_inner_lr: bool = False,
        zero_head: bool = False,
        joint_forward: bool = False,
        vectorize: Literal["auto", True, False] | str | bool = "auto",
        task_chunk: int | None = None,
        optimizer: OptimizerFactory | None = None,
        scheduler: Callable[..., Any] | None = None,
        grad_clip: float = 0.0,
        nonfinite: Literal["raise", "skip"] = "raise",
    ) -> None:
        super().__init__()
        if task not in ("regression", "classification"):
            raise ValueError(f"task must be 'regression' or 'classification', got {task!r}")
        if inner_steps < 0 or (eval_inner_steps is not None and eval_inner_steps < 0):
            raise ValueError("algorithm.inner_steps and algorithm.eval_inner_steps must be >= 0")
        if inner_steps or eval_inner_steps:
            _check_positive(inner_lr=inner_lr)
        if eval_inner_lr is not None:
            _check_positive(eval_inner_lr=eval_inner_lr)
            if learn_inner_lr:
                raise ValueError("algorithm.eval_inner_lr is for a fixed step size; Meta-SGD learns its step sizes "
                                 "(set algorithm.eval_inner_lr=null)")
        if str(vectorize).lower() not in ("auto", "true", "false"):
            raise ValueError(f"algorithm.vectorize must be auto, true or false, got {vectorize!r}")
        if task_chunk is not None and (isinstance(task_chunk, bool) or not isinstance(task_chunk, int) or task_chunk < 1):
            raise ValueError(f"algorithm.task_chunk must be a number of tasks >= 1 or null (all at once), got {task_chunk!r}")
        if isinstance(grad_clip, bool) or not isinstance(grad_clip, (int, float)) or grad_clip < 0:
            raise ValueError(f"algorithm.grad_clip must be a norm >= 0 (0 disables clipping), got {grad_clip!r}")
        if nonfinite not in ("raise", "skip"):
            raise ValueError(f"algorithm.nonfinite must be 'raise' or 'skip', got {nonfinite!r}")
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"])
        self.automatic_optimization = False
        self.net = net
        self.task = task
        self.inner_lr = inner_lr
        self.eval_inner_lr = inner_lr if eval_inner_lr is None else eval_inner_lr
        self.inner_steps = inner_steps
        self.eval_inner_steps = inner_steps if eval_inner_steps is None else eval_inner_steps
        self.first_order = first_order
        self.adapt_head_only = adapt_head_only
        self.zero_head = zero_head
        self._has_conv: bool | None = None
        self._running_stats = False
        self._body_params: list[tuple[str, Tensor]] | None = None
        self._param_slots: list[tuple[str, nn.Module, str]] | None = None
        self.joint_forward = joint_forward
        if joint_forward and not self.body_fixed_per_task:
            raise ValueError(
                f"algorithm.joint_forward=true needs a body that stays fixed while a task is solved, but "
                f"{type(self).__name__} adapts the whole network; use it with anil, protonet, metaoptnet or pretrain"
            )
        self.vectorize = str(vectorize).lower()
        if self.vectorize == "true" and running_stats(net):
            raise ValueError(
                "algorithm.vectorize=true cannot update batch norm's running statistics (model.bn=running) once per "
                "task under vmap: set algorithm.vectorize=auto or false (a loop over tasks), or model.bn=transductive"
            )
        self.task_chunk = task_chunk
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.grad_clip = grad_clip
        self.nonfinite = nonfinite
        self.skipped_steps = 0
        self.run_config: dict | None = None  # the composed Hydra config, stored in checkpoints
        self.inner_lrs: nn.ParameterDict | None = None
        if learn_inner_lr:
            # Keyed by the parameter's name in ``net`` (``head.weight`` when only the head adapts),
            # as fine-tuning reads them back; ParameterDict keys may not contain dots.
            prefix = "head." if adapt_head_only else ""
            self.inner_lrs = nn.ParameterDict({
                (prefix + k).replace(".", "__"): nn.Parameter(torch.full_like(p, inner_lr))
                for k, p in self.adapted_params().items()
            })

    # ----------------------------------------------------------------- the model as functions
    def loss_fn(self, out: Tensor, y: Tensor) -> Tensor:
        if self.task == "regression":
            return F.mse_loss(out, y)
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))

    def adapted_module(self) -> nn.Module:
        return self.net.head if self.adapt_head_only else self.net

    def adapted_params(self) -> Params:
        return dict(self.adapted_module().named_parameters())

    def step_sizes(self) -> float | dict[str, Tensor]:
        if self.inner_lrs is None:  # Lightning puts the module in eval mode for validation and test
            return self.inner_lr if self.training else self.eval_inner_lr
        return {k.replace("__", "."): v for k, v in self.inner_lrs.items()}

    def meta_params(self) -> dict[str, Any]:
        """Everything a task solution depends on, passed explicitly so vmap sees it."""
        return {"net": self.net_params(), "lr": self.step_sizes()}

    def net_params(self) -> Params:
        """``dict(net.named_parameters())``, read from where each parameter is stored: walking the
        module tree every meta-step costs more than a small MLP's whole forward pass. The tree is
        fixed once built; the parameters are read afresh, so replacing one is seen."""
        if self._param_slots is None:
            slots = [name.rpartition(".") for name in dict(self.net.named_parameters())]
            self._param_slots = [(f"{m}.{p}" if m else p, self.net.get_submodule(m), p) for m, _, p in slots]
        return {name: module._parameters[attr] for name, module, attr in self._param_slots}

    @property
    def body_fixed_per_task(self) -> bool:
        """Whether solving a task leaves the body as it is (then both sets' features are the same
        function of the input, and ``joint_forward`` is allowed)."""
        return self.adapt_head_only

    def features(self, net_params: Params, x: Tensor) -> Tensor:
        body = {k[len("body."):]: v for k, v in net_params.items() if k.startswith("body.")}
        fast = batched_forward(self.net.body)
        if fast is not None:  # Linear/ReLU bodies as plain functional products, no module calls
            return fast(body, x)
        if self._body_params is None:
            self._body_params = list(self.net.body.named_parameters())
        if len(body) == len(self._body_params) and all(body.get(k) is p for k, p in self._body_params):
            return self.net.body(x)  # the module's own weights: no functional_call swap (Python-heavy)
        return functional_call(self.net.body, body, (x,))

    def episode_features(self, net_params: Params, sx: Tensor, qx: Tensor) -> tuple[Tensor, Tensor]:
        """Body features of one task's support and query inputs (see ``joint_forward``)."""
        if not self.joint_forward:
            return self.features(net_params, sx), self.features(net_params, qx)
        f = self.features(net_params, torch.cat([sx, qx]))
        return f[: sx.shape[0]], f[sx.shape[0]:]

    # ------------------------------------------------------------------- one task, all tasks
    def inner_problem(
        self, meta: dict[str, Any], sx: Tensor, qx: Tensor, batched: bool = False, ways: int | None = None
    ) -> tuple[Callable, Params, Any, Tensor, Tensor, Gradient | None]:
        """What the inner loop adapts for one task: (forward, start params, step sizes, support
        inputs, query inputs, the support loss's gradient written out or ``None`` for autograd).
        With ``adapt_head_only`` the inputs become body features.
        ``ways``: with ``zero_head``, the zero head gets this many outputs (the episode's classes,
        which may differ from the network's head: training on more ways than the test).
        ``batched``: the inputs hold all tasks (leading dimension) and ``forward`` maps all tasks at
        once: for Linear/ReLU modules as matrix products, with their backpropagation written out
        (the start parameters stay shared until the first step makes them per task); else by vmap,
        the start parameters getting one copy per task (an ``expand``, no memory)."""
        net_params, lr = meta["net"], meta["lr"]
        if not self.adapt_head_only:
            module, start = self.net, net_params
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
            prefix = "" if self.adapt_head_only else "head."
            start = {k: v.new_zeros(v.shape if ways is None else (ways, *v.shape[1:])) if k.startswith(prefix) else v
                     for k, v in start.items()}

        def forward(p: Params, x: Tensor) -> Tensor:
            return functional_call(module, p, (x,))

        gradient = None
        if batched:
            # Linear/ReLU models (the sinusoid MLP, ANIL's head) as batched matrix products, others vmapped.
            fast = batched_forward(module) if sx.dim() == 3 else None
            if fast is not None:  # takes the start point as it is, shared by all tasks
                forward = fast
                gradient = batched_gradient(module, "mse" if self.task == "regression" else "cross_entropy")
            else:
                forward = vmap(forward)
                start = {k: v.expand(sx.shape[0], *v.shape) for k, v in start.items()}
        return forward, start, lr, sx, qx, gradient

    def zero_head_ways(self, sy: Tensor) -> int | None:
        """Outputs of a zero head for support labels ``sy`` (episode-local classes 0..ways-1):
        a zero head has no values to keep, so it takes each episode's own size (None: the head's)."""
        return int(sy.max()) + 1 if self.zero_head and self.task == "classification" else None

    def task_loss(self, batched: bool) -> Callable[[Tensor, Tensor], Tensor]:
        """The inner loss: one task's mean loss, or over a batch of tasks the sum of their mean
        losses, whose gradient with respect to per-task parameters is each task's own."""
        if not batched:
            return self.loss_fn
        if self.task == "regression":  # the same sum in two ops instead of four (inner and outer graph)
            return lambda out, y: F.mse_loss(out, y, reduction="sum") / out[0].numel()
        return lambda out, y: self.per_task_loss(out, y).sum()

    def solve_task(
        self,
        meta: dict[str, Any],
        sx: Tensor,
        sy: Tensor,
        qx: Tensor,
        steps: int,
        first_order: bool,
        all_steps: bool,
        batched: bool = False,
    ) -> Tensor:
        """Adapt on one task's support set; return query outputs (``[steps+1, Q, out]`` when
        ``all_steps``, else ``[Q, out]`` after the last step). ``batched``: all tasks at once,
        with a leading task dimension on inputs and outputs."""
        forward, start, lr, sx, qx, gradient = self.inner_problem(meta, sx, qx, batched, self.zero_head_ways(sy))
        trajectory = adapt(forward, start, sx, sy, self.task_loss(batched), steps, lr, first_order, gradient)
        if all_steps:
            return torch.stack([forward(p, qx) for p in trajectory], dim=int(batched))
        return forward(trajectory[-1], qx)

    def use_vmap(self) -> bool:
        """Vectorize over tasks? ``auto``: on accelerators always; on a CPU only convolution-free
        models (there a loop is 2-3x faster for Conv4, ANIL included: measured in benchmarks/bench.py);
        never for a model with running batch-norm statistics (vmap cannot update them per task)."""
        if self.vectorize != "auto":
            return self.vectorize == "true"
        if self._has_conv is None:  # asked every meta-step; the architecture does not change
            self._has_conv = any(isinstance(m, nn.modules.conv._ConvNd) for m in self.net.modules())
            self._running_stats = running_stats(self.net)
        return not self._running_stats and (self.device.type != "cpu" or not self._has_conv)

    def map_tasks(self, fn: Callable[..., Any], meta: dict[str, Any], episode: Episode, batches_itself: bool = False) -> Any:
        """Apply ``fn(meta, sx, sy, qx)`` to every task: vectorized or looped, same numbers.

        Vectorized, a ``fn`` that ``batches_itself`` is called once with all tasks
        (``batched=True``) and does its own vectorizing (``solve_task`` does); any other ``fn``
        runs under ``torch.func.vmap``."""
        args = (episode.support_x, episode.support_y, episode.query_x)
        if self.use_vmap():
            if batches_itself:
                return fn(meta, *args, batched=True)
            return vmap(fn, in_dims=(None, 0, 0, 0))(meta, *args)
        outs = [fn(meta, *(a[i] for a in args)) for i in range(episode.num_tasks)]
        return tree_map(lambda *xs: torch.stack(xs), *outs) if isinstance(outs[0], (tuple, dict)) else torch.stack(outs)

    def query_outputs(self, episode: Episode, steps: int, first_order: bool, all_steps: bool = False) -> Tensor:
        fn = partial(self.solve_task, steps=steps, first_order=first_order, all_steps=all_steps)
        return self.map_tasks(fn, self.meta_params(), episode, batches_itself=True)

    # -------------------------------------------------------------------------------- metrics
    @property
    def metric_name(self) -> str:
        return "mse" if self.task == "regression" else "acc"

    def per_task_metric(self, out: Tensor, y: Tensor) -> Tensor:
        """One value per task (and step): MSE, or accuracy in percent. ``out``: ``[..., Q, C]``."""
        if self.task == "regression":
            return (out - y).pow(2).mean(dim=(-2, -1))
        return (out.argmax(-1) == y).float().mean(-1) * 100.0

    def per_task_loss(self, out: Tensor, y: Tensor) -> Tensor:
        """One loss per task. ``out``: ``[tasks, Q, C]``."""
        if self.task == "regression":
            return (out - y).pow(2).mean(dim=(-2, -1))
        return F.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="none").view(y.shape).mean(-1)

    # ------------------------------------------------------------------------- outer loop
    def meta_backward(self, episode: Episode) -> tuple[Tensor, Tensor]:
        """Form the meta-gradient in ``.grad``; return (meta-loss, query outputs)."""
        if self.use_vmap():  # all tasks at once, or ``task_chunk`` at a time
            size = self.task_chunk or episode.num_tasks
            solve = partial(self.query_outputs, steps=self.inner_steps, first_order=self.first_order)
        else:  # one task at a time
            size, meta = 1, self.meta_params()

            def solve(part: Episode) -> Tensor:
                sx, sy, qx = part.support_x[0], part.support_y[0], part.query_x[0]
                return self.solve_task(meta, sx, sy, qx, self.inner_steps, self.first_order, all_steps=False)[None]
        return self.backward_in_parts(episode, size, solve)

    def backward_in_parts(self, episode: Episode, size: int, solve: Callable[[Episode], Tensor]) -> tuple[Tensor, Tensor]:
        """The meta-step as one backward per ``size`` tasks (``solve``: a part's query outputs).
        Each part's graph is freed before the next is built, so peak memory is a part's instead of
        the meta-batch's (and a looped task's backward finds its activations still in cache). Every
        task has as many queries, so the parts' mean losses, weighted by their share of the tasks,
        sum to the meta-loss."""
        n = episode.num_tasks
        if size >= n:
            out = solve(episode)
            loss = self.loss_fn(out, episode.query_y)
            self.backward_(loss)
            return loss, out
        outs, total = [], torch.zeros((), device=episode.query_x.device)
        for i in range(0, n, size):
            part = episode[i : i + size]
            out = solve(part)
            loss = self.loss_fn(out, part.query_y) / (n / part.num_tasks)
            self.backward_(loss)
            outs.append(out.detach())
            total = total + loss.detach()
        return total, torch.cat(outs)

    def backward_(self, loss: Tensor) -> None:
        # Outside a Trainer (benchmarks, tests) the plain backward is the same computation.
        self.manual_backward(loss) if self._trainer is not None else loss.backward()

    def sync_meta_gradient(self, loss: Tensor) -> Tensor:
        """Average the meta-gradient (and the loss) over data-parallel ranks; return the loss.

        Each rank holds an equal share of the meta-batch, so the mean of the ranks' gradients
        is the gradient of the whole meta-batch. One flat all-reduce; the loss rides along, so
        every rank sees the same NaN/Inf verdict and none is left waiting in a collective."""
        world = self.trainer.world_size if self._trainer is not None else 1
        if world == 1:
            return loss
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        total = loss.detach().reshape(1).clone()
        all_reduce_sum_([*grads, total])
        for g in grads:
            g /= world
        return total[0] / world

    def training_step(self, episode: Episode, batch_idx: int) -> Tensor:
        opt = self.optimizers()
        opt.zero_grad(set_to_none=True)
        loss, out = self.meta_backward(episode)
        loss = self.sync_meta_gradient(loss.detach())
        finite = torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in self.parameters() if p.grad is not None)
        if not finite:
            msg = (
                f"non-finite meta-training loss or gradient (loss {loss.item()}) at step {self.global_step}. "
                f"Likely cause: a step size too large (algorithm.inner_lr={self.inner_lr}, or the optimizer's "
                "lr); lower it, or set algorithm.nonfinite=skip to drop such steps. The last good checkpoint is kept."
            )
            if self.nonfinite == "raise":
                raise NonFiniteLossError(msg)
            self.skipped_steps += 1
            # A step with no gradients leaves every parameter (and Adam's moments) untouched but
            # still counts, so max_steps and the per-step episode stream move on.
            opt.zero_grad(set_to_none=True)
            opt.step()
            self.log("train/skipped_steps", float(self.skipped_steps), on_step=True)
            return loss
        # Lightning writes step metrics only when this (its own, also used by its
        # LearningRateMonitor) says so; before clipping and the step, to see what the batch saw.
        if self._trainer is not None and self.trainer._logger_connector.should_update_logs:
            self.log_training_details(episode)
        if self.grad_clip:
            self.clip_gradients(opt, gradient_clip_val=self.grad_clip, gradient_clip_algorithm="norm")
        opt.step()
        sched = self.lr_schedulers()
        if sched is not None:
            sched.step()
        self.log("train/loss", loss, prog_bar=True, on_step=True)
        if self.task == "classification":
            with torch.no_grad():
                metric = self.per_task_metric(out.detach(), episode.query_y).mean()
            self.log(f"train/{self.metric_name}", metric, prog_bar=True, on_step=True)
        return loss

    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            raise ValueError("algorithm.optimizer is not set; give an optimizer config with _partial_: true")
        opt = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer=opt), "interval": "step"}}

    def log_training_details(self, episode: Episode) -> None:
        """The meta-batch's query metric (and loss) before and after each inner step, and the
        meta-gradient's global norm before clipping (Reptile: its pseudo-gradient's). Called only
        on logging steps (every ``log_every_n_steps``) because it runs the inner loop again."""
        with kept_buffers(self.net):  # the meta-step already updated any running statistics
            metric, loss = self.adaptation_curve(episode, self.inner_steps)
        self.log_per_step("train", metric.mean(0), loss.mean(0))
        norms = [torch.linalg.vector_norm(p.grad.detach()) for p in self.parameters() if p.grad is not None]
        if norms:
            self.log("train/grad_norm", torch.linalg.vector_norm(torch.stack(norms)))

    # ----------------------------------------------------------------- validation and test
    def on_validation_epoch_start(self) -> None:
        self.eval_stats = EpisodeStats(self.eval_inner_steps + 1).to(self.device)
        self.eval_loss = EpisodeStats(self.eval_inner_steps + 1).to(self.device)

    on_test_epoch_start = on_validation_epoch_start

    def adaptation_curve(self, episode: Episode, steps: int) -> tuple[Tensor, Tensor]:
        """Query metric and loss per task and inner step (``[tasks, steps+1]``; column 0 is
        before adaptation)."""
        # Adaptation needs gradients even though Lightning disables them at evaluation. First
        # order is exact for the adapted values; only the outer gradient would differ, and none
        # is taken. The meta-parameters are frozen meanwhile: otherwise every query output would
        # keep an outer graph (all steps, all tasks of the batch: gigabytes for Conv4).
        with torch.enable_grad(), frozen(self):
            out = self.query_outputs(episode, steps, first_order=True, all_steps=True)
        out = out.detach()  # [tasks, steps+1, Q, C]
        y = episode.query_y.unsqueeze(1).expand(-1, out.shape[1], *episode.query_y.shape[1:])
        loss = self.per_task_loss(out.flatten(0, 1), y.flatten(0, 1)).view(out.shape[:2])
        return self.per_task_metric(out, y), loss

    def evaluation_step(self, episode: Episode) -> None:
        metric, loss = self.adaptation_curve(episode, self.eval_inner_steps)
        self.eval_stats.update(metric)
        self.eval_loss.update(loss)

    def validation_step(self, episode: Episode, batch_idx: int) -> None:
        self.evaluation_step(episode)

    def test_step(self, episode: Episode, batch_idx: int) -> None:
        self.evaluation_step(episode)

    def log_evaluation(self, stage: str) -> None:
        # torchmetrics squeezes one-element results; reshape keeps one entry per inner step.
        mean, ci95, n = (t.reshape(-1) for t in self.eval_stats.compute())
        loss_mean = self.eval_loss.compute()[0].reshape(-1)
        name = self.metric_name
        self.log(f"{stage}/{name}", mean[-1].float(), prog_bar=stage == "val")
        self.log(f"{stage}/{name}_ci95", ci95[-1].float())
        self.log(f"{stage}/loss", loss_mean[-1].float())
        self.log(f"{stage}/episodes", n[0].float())
        self.log_per_step(stage, mean, loss_mean)
        self.eval_stats.reset()
        self.eval_loss.reset()

    def log_per_step(self, stage: str, metric: Tensor, loss: Tensor) -> None:
        """``{stage}/{metric}_step{i}`` for every inner step ``i`` (0: before adaptation), and
        ``{stage}/loss_step{i}`` where the loss is not the metric itself (classification)."""
        for i in range(metric.shape[0]):
            self.log(f"{stage}/{self.metric_name}_step{i}", metric[i].float())
            if self.task == "classification":
                self.log(f"{stage}/loss_step{i}", loss[i].float())

    def on_validation_epoch_end(self) -> None:
        self.log_evaluation("val")

    def on_test_epoch_end(self) -> None:
        self.log_evaluation("test")

    # ---------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.run_config is not None:
            checkpoint["metaft_config"] = self.run_config
        checkpoint["metaft_skipped_steps"] = self.skipped_steps

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.skipped_steps = int(checkpoint.get("metaft_skipped_steps", 0))
