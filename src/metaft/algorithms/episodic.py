"""``MetaLearner``: the Lightning side every algorithm shares: the outer step (with data-parallel
sync and the NaN policy), evaluation on fixed episodes, logging and checkpoints.

An algorithm says how it solves tasks (``query_outputs``) and forms the meta-gradient
(``meta_backward``), and declares what the rest of the code needs to know about it: on the class
(``has_inner_loop``, ``head_per_episode``, ``classifies_training_classes``, ``untrained_head_start``,
...; read before a learner is built, e.g. from a checkpoint's config) and as properties of the built
learner (``sizes_head_per_episode``, ``trains_head``, ``body_fixed_per_task``). Stages, fine-tuning
and the study ask these, never a learner's type or name.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable, ClassVar, Literal

import lightning as L
from omegaconf import DictConfig, ListConfig, OmegaConf
import torch
from torch import Tensor, nn
from torch.func import functional_call

from metaft import checkpoint as checkpoint_format
from metaft.core import tasks
from metaft.core.errors import NonFiniteLossError
from metaft.core.inner_loop import Params
from metaft.core.metrics import EpisodeStats
from metaft.core.objective import Kind, Objective
from metaft.data.episode import Episode
from metaft.models.nets import MetaNet, batched_forward
from metaft.models.norm import support_statistics
from metaft.runtime.distributed import all_reduce_sum_

OptimizerFactory = Callable[..., torch.optim.Optimizer]


def check_positive(**values: float) -> None:
    for name, v in values.items():
        if v is None or not (v > 0):
            raise ValueError(f"algorithm.{name} must be > 0, got {v}")


class MetaLearner(L.LightningModule):
    """An episodic learner under Lightning (manual optimisation): subclasses solve tasks.

    Args:
        net: the model (a ``MetaNet``: ``body`` then ``head``).
        task: ``regression`` (MSE) or ``classification`` (cross-entropy, accuracy in percent).
        inner_lr: inner-loop step size (Meta-SGD: the initial value of every learned alpha;
            pre-training: the step of the head it fits at evaluation).
        inner_steps: inner steps in meta-training.
        eval_inner_steps: inner steps at validation and test (default: ``inner_steps``).
        eval_inner_lr: step size at validation and test (default: ``inner_lr``). With the mean
            loss over the support set, a step's change per class scales as 1 / (ways * shots), so a
            model meta-trained on more ways than it is tested on (``dataset.train_ways``) keeps its
            per-class step with ``inner_lr = eval_inner_lr * train_ways / ways``.
        joint_forward: compute a task's support and query features in one body pass, so
            batch-norm statistics are the whole episode's rather than each set's (the 5 images of a
            5-way 1-shot support set make noisy statistics), in one pass instead of two. Only for
            learners whose body is fixed while a task is solved (ANIL, ProtoNet, MetaOptNet,
            pre-training); MAML-style learners adapt the body, so their query pass needs the
            adapted weights.
        vectorize: ``true`` vmaps over the tasks of a meta-batch, ``false`` loops over them,
            ``auto`` decides by model and device (``core.tasks.vectorize_choice``).
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
        task: Kind = "regression",
        inner_lr: float = 0.01,
        inner_steps: int = 1,
        eval_inner_steps: int | None = None,
        eval_inner_lr: float | None = None,
        joint_forward: bool = False,
        vectorize: Literal["auto", True, False] | str | bool = "auto",
        task_chunk: int | None = None,
        optimizer: OptimizerFactory | None = None,
        scheduler: Callable[..., Any] | None = None,
        grad_clip: float = 0.0,
        nonfinite: Literal["raise", "skip"] = "raise",
    ) -> None:
        super().__init__()
        self.objective = Objective(task)
        if inner_steps < 0 or (eval_inner_steps is not None and eval_inner_steps < 0):
            raise ValueError("algorithm.inner_steps and algorithm.eval_inner_steps must be >= 0")
        if inner_steps or eval_inner_steps:
            check_positive(inner_lr=inner_lr)
        if eval_inner_lr is not None:
            check_positive(eval_inner_lr=eval_inner_lr)
        if str(vectorize).lower() not in ("auto", "true", "false"):
            raise ValueError(f"algorithm.vectorize must be auto, true or false, got {vectorize!r}")
        if task_chunk is not None and (isinstance(task_chunk, bool) or not isinstance(task_chunk, int) or task_chunk < 1):
            raise ValueError(f"algorithm.task_chunk must be a number of tasks >= 1 or null (all at once), got {task_chunk!r}")
        if isinstance(grad_clip, bool) or not isinstance(grad_clip, (int, float)) or grad_clip < 0:
            raise ValueError(f"algorithm.grad_clip must be a norm >= 0 (0 disables clipping), got {grad_clip!r}")
        if nonfinite not in ("raise", "skip"):
            raise ValueError(f"algorithm.nonfinite must be 'raise' or 'skip', got {nonfinite!r}")
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"])
        for key, value in list(self.hparams.items()):  # Hydra's lists as plain ones: weights-only loading reads them
            if isinstance(value, (ListConfig, DictConfig)):
                self.hparams[key] = OmegaConf.to_container(value)
        self.automatic_optimization = False
        self.net = net
        self.task = task
        self.inner_lr = inner_lr
        self.eval_inner_lr = inner_lr if eval_inner_lr is None else eval_inner_lr
        self.inner_steps = inner_steps
        self.eval_inner_steps = inner_steps if eval_inner_steps is None else eval_inner_steps
        self.joint_forward = joint_forward
        self.inner_lrs: nn.ParameterDict | None = None  # learned step sizes (Meta-SGD)
        self._has_conv: bool | None = None
        self._running_stats = False
        self._body_params: list[tuple[str, Tensor]] | None = None
        self._param_slots: list[tuple[str, nn.Module, str]] | None = None
        self.vectorize = str(vectorize).lower()
        if self.vectorize == "true" and tasks.running_stats(net):
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
        # The last evaluation's per-episode (metric, loss) of each stage ("val", "test").
        self.episode_scores: dict[str, tuple[Tensor, Tensor]] = {}
        self.run_config: dict | None = None  # the composed Hydra config, stored in checkpoints
        # The training and validation classes by image source (``Classes.stored()``), stored in
        # checkpoints so that no later use scores it on classes it has seen.
        self.trained_classes: dict | None = None

    # ------------------------------------------------------------- what the algorithm declares
    # On the class: true of every learner of the class, whatever its settings.
    has_inner_loop: ClassVar[bool] = False
    """Solves a task by gradient steps of the shared inner loop (the options of
    ``conf/algorithm/_base/inner_loop.yaml`` apply to it)."""
    regresses: ClassVar[bool] = True
    """Learns regression tasks as well as classification."""
    head_per_episode: ClassVar[bool] = False
    """Classifies body features with a head built afresh from each episode's support set, never
    with ``net.head`` (which it leaves untrained)."""
    classifies_training_classes: ClassVar[bool] = False
    """Trains a classifier over all the stage-1 training classes on labelled batches (supervised
    pre-training) instead of episodes: the classifier is sized from the training split before
    fitting, batch norm spans data-parallel ranks, and its checkpoints are fine-tuning's
    ``init=pretrained``."""
    untrained_head_start: ClassVar[Literal["prototypes", "zero"]] = "zero"
    """How fine-tuning's ``head_init=auto`` starts a classification head this learner left
    untrained (a regression head always starts at zero)."""
    learns_step_sizes: ClassVar[bool] = False
    """Learns the inner loop's step sizes (Meta-SGD), so they are not a setting to choose."""

    # On the built learner: may depend on its settings.
    @property
    def sizes_head_per_episode(self) -> bool:
        """Whether the classifier is built from each episode (so any number of ways works)
        rather than read from ``net.head``, sized for ``dataset.ways``."""
        return False

    @property
    def trains_head(self) -> bool:
        """Whether meta-training leaves ``net.head`` meaningful (fine-tuning keeps it only then)."""
        return not self.head_per_episode

    @property
    def body_fixed_per_task(self) -> bool:
        """Whether solving a task leaves the body as it is (then both sets' features are the same
        function of the input, and ``joint_forward`` is allowed)."""
        return False

    def check_support_size(self, train: int | None, evaluation: int | None) -> None:
        """Refuse settings that do not fit support sets of ``train`` / ``evaluation`` examples
        (None: not fixed by the dataset), before anything runs."""

    first_order: bool = False  # the gradient learners' setting; a meta-step of the others has no inner loop

    def solve_task(self, meta: dict[str, Any], sx: Tensor, sy: Tensor, qx: Tensor, steps: int, first_order: bool,
                   all_steps: bool, batched: bool = False) -> Tensor:
        """Adapt on one task's support set; return query outputs (``[steps+1, Q, out]`` when
        ``all_steps``, else ``[Q, out]`` after the last step). ``batched``: all tasks at once,
        with a leading task dimension on inputs and outputs."""
        raise NotImplementedError

    def query_outputs(self, episode: Episode, steps: int, first_order: bool, all_steps: bool = False) -> Tensor:
        """Every task's query outputs after ``steps`` of adaptation (``[tasks, steps+1, Q, C]``
        with ``all_steps``, else ``[tasks, Q, C]``)."""
        fn = partial(self.solve_task, steps=steps, first_order=first_order, all_steps=all_steps)
        return self.map_tasks(fn, self.meta_params(), episode, batches_itself=True)

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

    # ----------------------------------------------------------------- the model as functions
    def loss_fn(self, out: Tensor, y: Tensor) -> Tensor:
        return self.objective.loss(out, y)

    @property
    def metric_name(self) -> str:
        return self.objective.metric_name

    def per_task_metric(self, out: Tensor, y: Tensor) -> Tensor:
        return self.objective.per_task_metric(out, y)

    def per_task_loss(self, out: Tensor, y: Tensor) -> Tensor:
        return self.objective.per_task_loss(out, y)

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

    @property
    def inductive(self) -> bool:
        """Queries normalised with the support set's batch-norm statistics (``model.bn=inductive``)."""
        return self.net.norm == "inductive"

    def batch_norm(self) -> str:
        """How batch norm normalises query examples, as results record it."""
        if self.net.norm == "transductive":
            return "transductive (episode)" if self.joint_forward else "transductive (query set)"
        return "inductive (support set)" if self.inductive else self.net.norm

    def episode_features(self, net_params: Params, sx: Tensor, qx: Tensor) -> tuple[Tensor, Tensor]:
        """Body features of one task's support and query inputs (see ``joint_forward``; with
        inductive batch norm both sets are normalised with the support set's statistics)."""
        if self.inductive:
            with support_statistics(self.net.body, sx.shape[0]):
                f = self.features(net_params, torch.cat([sx, qx]))
            return f[: sx.shape[0]], f[sx.shape[0]:]
        if not self.joint_forward:
            return self.features(net_params, sx), self.features(net_params, qx)
        f = self.features(net_params, torch.cat([sx, qx]))
        return f[: sx.shape[0]], f[sx.shape[0]:]

    # ------------------------------------------------------------------------- the task engine
    def use_vmap(self) -> bool:
        """Vectorize over tasks (``core.tasks.vectorize_choice``)?"""
        if self._has_conv is None:  # asked every meta-step; the architecture does not change
            self._has_conv = tasks.has_conv(self.net)
            self._running_stats = tasks.running_stats(self.net)
        return tasks.vectorize_choice(self.vectorize, self.device, self._has_conv, self._running_stats)

    def map_tasks(self, fn: Callable[..., Any], meta: dict[str, Any], episode: Episode, batches_itself: bool = False) -> Any:
        return tasks.map_tasks(fn, meta, episode, self.use_vmap(), batches_itself)

    def backward_in_parts(self, episode: Episode, size: int, solve: Callable[[Episode], Tensor]) -> tuple[Tensor, Tensor]:
        return tasks.backward_in_parts(episode, size, solve, self.loss_fn, self.backward_)

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

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Regularisers on a schedule (DropBlock's ramp) follow the global step, which a resumed run restores.
        self.net.set_training_step(self.global_step)

    def training_step(self, episode: Episode, batch_idx: int) -> Tensor:
        return self.outer_step(lambda: self.meta_backward(episode), episode.query_y,
                               lambda: self.log_training_details(episode))

    def outer_step(self, backward: Callable[[], tuple[Tensor, Tensor]], y: Tensor, details: Callable[[], None]) -> Tensor:
        """One optimizer step: ``backward()`` forms the gradient and returns (loss, outputs for
        targets ``y``); then data-parallel sync, the NaN policy, ``details()`` on logging steps,
        clipping, the step and the scheduler."""
        opt = self.optimizers()
        opt.zero_grad(set_to_none=True)
        loss, out = backward()
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
            details()
        if self.grad_clip:
            self.clip_gradients(opt, gradient_clip_val=self.grad_clip, gradient_clip_algorithm="norm")
        opt.step()
        sched = self.lr_schedulers()
        if sched is not None:
            sched.step()
        self.log("train/loss", loss, prog_bar=True, on_step=True)
        if not self.objective.regression:
            with torch.no_grad():
                metric = self.per_task_metric(out.detach(), y).mean()
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
        # The meta-step already updated any running statistics (and a carried inner optimiser state).
        with tasks.kept_buffers(self):
            metric, loss = self.adaptation_curve(episode, self.inner_steps)
        self.log_per_step("train", metric.mean(0), loss.mean(0))
        self.log_gradient_norm()

    def log_gradient_norm(self) -> None:
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
        with torch.enable_grad(), tasks.frozen(self):
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
        # Kept for the per-episode file (stages.meta): [episodes, steps+1], ranks in order.
        self.episode_scores[stage] = (self.eval_stats.gathered, self.eval_loss.gathered)
        self.eval_stats.reset()
        self.eval_loss.reset()

    def log_per_step(self, stage: str, metric: Tensor, loss: Tensor) -> None:
        """``{stage}/{metric}_step{i}`` for every inner step ``i`` (0: before adaptation), and
        ``{stage}/loss_step{i}`` where the loss is not the metric itself (classification)."""
        for i in range(metric.shape[0]):
            self.log(f"{stage}/{self.metric_name}_step{i}", metric[i].float())
            if not self.objective.regression:  # else the loss is the metric itself
                self.log(f"{stage}/loss_step{i}", loss[i].float())

    def on_validation_epoch_end(self) -> None:
        self.log_evaluation("val")

    def on_test_epoch_end(self) -> None:
        self.log_evaluation("test")

    # ---------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint_format.write(checkpoint, self.run_config, head_trained=self.trains_head,
                                skipped_steps=self.skipped_steps, classes=self.trained_classes)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint_format.check_version(checkpoint)  # a resumed run of another format version
        self.skipped_steps = checkpoint_format.skipped_steps(checkpoint)
