"""``MetaLearner``: what every algorithm shares: its settings, the model as functions, the task
engine and checkpoints, with the outer step (``outer_step.OuterStep``) and evaluation on fixed
episodes (``evaluation.Evaluation``) as parts of its own.

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

from omegaconf import DictConfig, ListConfig, OmegaConf
import torch
from torch import Tensor, nn
from torch.func import functional_call

from metaft import checkpoint as checkpoint_format
from metaft.algorithms.evaluation import Evaluation
from metaft.algorithms.outer_step import OuterStep
from metaft.core import tasks
from metaft.core.inner_loop import Params
from metaft.core.objective import Kind, Objective
from metaft.data.episode import Episode
from metaft.models.nets import MetaNet, batched_forward
from metaft.models.norm import support_statistics

OptimizerFactory = Callable[..., torch.optim.Optimizer]


def check_positive(**values: float) -> None:
    for name, v in values.items():
        if v is None or not (v > 0):
            raise ValueError(f"algorithm.{name} must be > 0, got {v}")


class MetaLearner(OuterStep, Evaluation):
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

    # ---------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint_format.write(checkpoint, self.run_config, head_trained=self.trains_head,
                                skipped_steps=self.skipped_steps, classes=self.trained_classes)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint_format.check_version(checkpoint)  # a resumed run of another format version
        self.skipped_steps = checkpoint_format.skipped_steps(checkpoint)
