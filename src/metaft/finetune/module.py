"""``FineTuner``: ordinary supervised mini-batch training of a ``MetaNet``, and how its weights
are initialised from a meta-checkpoint (body, head rules, Meta-SGD step sizes)."""
from __future__ import annotations

from typing import Any, Callable, Mapping

import lightning as L
import torch
from torch import Tensor

from metaft import checkpoint as checkpoint_format
from metaft.algorithms.catalogue import learner_class
from metaft.algorithms.evaluation import log_scores
from metaft.core.errors import NonFiniteLossError
from metaft.core.objective import Kind, Objective
from metaft.models.loading import load_body, shape_table
from metaft.models.nets import MetaNet
from metaft.runtime.distributed import all_reduce_sum_, global_batchnorm
from metaft.core.metrics import EpisodeStats

HEAD_INITS = ("auto", "keep", "zero", "prototypes", "random")


class FineTuner(L.LightningModule):
    """Supervised fine-tuning, scored by the same ``Objective`` as stage 1 and the study:
    cross-entropy (accuracy in percent) or MSE.

    Args:
        net: the model, already initialised (see ``load_body`` / ``init_head``).
        task: ``classification`` or ``regression``.
        optimizer: optimizer factory (``params -> Optimizer``).
        scheduler: optional LR scheduler factory, stepped every training step.
        lr_scales: per-parameter-entry multipliers of the gradient (Meta-SGD's learned step
            sizes); with plain SGD at ``lr=1`` the update is Meta-SGD's ``theta - alpha * grad``.
        grad_clip: clip the gradient's global norm (``0`` disables).
    """

    def __init__(self, net: MetaNet, task: Kind,
                 optimizer: Callable[..., torch.optim.Optimizer], scheduler: Callable[..., Any] | None = None,
                 lr_scales: Mapping[str, Tensor] | None = None, grad_clip: float = 0.0) -> None:
        super().__init__()
        self.objective = Objective(task)  # refuses another kind of task
        # Data parallel shares each training batch out: batch norm must see the whole batch for N
        # ranks to give the one-process update (plain batch norm in one process).
        self.net, self.task = global_batchnorm(net), task
        self.optimizer_factory, self.scheduler_factory, self.grad_clip = optimizer, scheduler, grad_clip
        self.scaled: list[str] = []
        for name, scale in (lr_scales or {}).items():
            # Buffers follow the module to its device; not persistent, so checkpoints hold the net only.
            self.register_buffer("lr_scale__" + name.replace(".", "__"), scale.detach().clone(), persistent=False)
            self.scaled.append(name)
        self.run_config: dict | None = None  # the composed Hydra config, stored in checkpoints
        # Per-example values through the stage-1 metric path: mean and 95% CI. Every rank evaluates
        # every example (see SupervisedTarget._eval_loader), so nothing is gathered. Made here, not
        # at each evaluation: made inside a validation they stayed in eval mode, and Lightning
        # warned of "modules in eval mode" at the start of every fine-tuning run.
        self.eval_stats = EpisodeStats(1, sync_on_compute=False)
        self.eval_loss = EpisodeStats(1, sync_on_compute=False)

    @property
    def metric_name(self) -> str:
        return self.objective.metric_name

    def per_example_loss(self, out: Tensor, y: Tensor) -> Tensor:
        return self.objective.per_example_loss(out, y)

    def per_example_metric(self, out: Tensor, y: Tensor) -> Tensor:
        return self.objective.per_example_metric(out, y)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    # ------------------------------------------------------------------------------ training
    def training_step(self, batch: tuple[Tensor, Tensor, int], batch_idx: int) -> Tensor:
        x, y, global_size = batch
        # Sum over this rank's share / the global batch size: summed over ranks, the gradient is
        # the one-process mean-loss gradient, whatever the shares (see finetune.data).
        loss = self.per_example_loss(self(x), y).sum() / int(global_size)
        self._train_loss = loss.detach()
        return loss

    def on_after_backward(self) -> None:
        params = [p for p in self.parameters() if p.requires_grad]
        for p in params:
            if p.grad is None:  # every rank must contribute the same tensors to the all-reduce
                p.grad = torch.zeros_like(p)
        loss = self._train_loss.reshape(1).clone()
        if self._trainer is not None and self.trainer.world_size > 1:
            all_reduce_sum_([p.grad for p in params] + [loss])
        if not torch.isfinite(loss).all():  # after the all-reduce: every rank raises together
            hint = (" With metasgd_lrs=true the gradients are scaled by Meta-SGD's learned step sizes, which were "
                    "tuned for a few inner steps (some are negative) and can diverge over many; lower the lr "
                    "(e.g. 0.1) or the step count." if self.scaled else "")
            raise NonFiniteLossError(f"non-finite fine-tuning loss ({loss.item()}) at step {self.global_step}; lower "
                                     f"finetuner.optimizer.lr or set finetuner.grad_clip.{hint}")
        for name in self.scaled:
            self.net.get_parameter(name.removeprefix("net.")).grad.mul_(getattr(self, "lr_scale__" + name.replace(".", "__")))
        self.log("train/loss", loss[0], prog_bar=True, on_step=True)

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: Any = None,
                                    gradient_clip_algorithm: Any = None) -> None:
        if self.grad_clip and self.grad_clip > 0:
            self.clip_gradients(optimizer, gradient_clip_val=self.grad_clip, gradient_clip_algorithm="norm")

    def configure_optimizers(self) -> Any:
        opt = self.optimizer_factory(params=[p for p in self.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer=opt), "interval": "step"}}

    # ---------------------------------------------------------------------- validation, test
    def on_validation_epoch_start(self) -> None:
        self.eval_stats.reset()
        self.eval_loss.reset()

    on_test_epoch_start = on_validation_epoch_start

    def evaluation_step(self, batch: tuple[Tensor, Tensor]) -> None:
        x, y = batch
        out = self(x)
        self.eval_stats.update(self.per_example_metric(out, y).unsqueeze(-1))
        self.eval_loss.update(self.per_example_loss(out, y).unsqueeze(-1))

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.evaluation_step(batch)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.evaluation_step(batch)

    def log_evaluation(self, stage: str) -> None:
        # Stage 1's report, one column (no adaptation steps), counting examples instead of episodes.
        log_scores(self, stage, self.metric_name, self.eval_stats, self.eval_loss, "examples")
        self.eval_stats.reset()
        self.eval_loss.reset()

    def on_validation_epoch_end(self) -> None:
        self.log_evaluation("val")

    def on_test_epoch_end(self) -> None:
        self.log_evaluation("test")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint_format.write(checkpoint, self.run_config)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint_format.check_version(checkpoint)  # a resumed run of another format version


# -------------------------------------------------------------------------- initialisation
@torch.no_grad()
def class_prototypes(net: MetaNet, x: Tensor, y: Tensor, ways: int) -> Tensor:
    """Mean body feature of each class, ``[ways, feature_dim]``."""
    feats = net.body(x).flatten(1)
    counts = torch.bincount(y, minlength=ways)
    if (counts == 0).any():
        raise ValueError("head_init=prototypes needs at least one training example of every class")
    return torch.zeros(ways, feats.shape[1], dtype=feats.dtype).index_add_(0, y, feats) / counts.unsqueeze(1)


def untrained_head_rule(ckpt: Mapping[str, Any], ckpt_cfg: Mapping[str, Any], task: str) -> str | None:
    """How ``head_init=auto`` starts a head the checkpoint's learner never trained, or ``None``
    when its ``net.head`` was trained. Whether it was is read from the checkpoint
    (``checkpoint.head_trained``), or, for a checkpoint written before it was recorded, from what
    the learner's class declares (``head_per_episode``) and its stored ``algorithm.zero_head``.
    The start is the class's ``untrained_head_start`` for classification, ``zero`` for regression."""
    learner = learner_class(ckpt_cfg)
    trained = checkpoint_format.head_trained(ckpt)
    if trained is None:
        trained = not (learner.head_per_episode or bool((ckpt_cfg.get("algorithm") or {}).get("zero_head", False)))
    if trained:
        return None
    return "zero" if Objective(task).regression else learner.untrained_head_start


@torch.no_grad()
def init_head(net: MetaNet, rule: str, state_dict: Mapping[str, Tensor] | None, task: str,
              train: tuple[Tensor, Tensor] | None = None, untrained: str | None = None) -> str:
    """Set ``net.head`` by ``rule``; return the rule applied.

    auto: the checkpoint's head when it has the target's shape and was trained (``untrained`` is
    ``None``); a head its learner never trained gets the rule ``untrained`` names (see
    ``untrained_head_rule``); a trained head of another shape gets ``zero``; no checkpoint:
    ``random``. keep: the checkpoint's head (shapes must match). zero: W = 0, b = 0 (the
    logits start uniform and every class is treated alike). prototypes: the linear layer that
    equals a nearest-prototype classifier (Triantafillou et al. 2020):
    W_c = 2 mu_c, b_c = -|mu_c|^2, mu_c the mean body feature of class c's training examples.
    random: the module's own initialisation.
    """
    if rule not in HEAD_INITS:
        raise ValueError(f"head_init must be one of {', '.join(HEAD_INITS)}, got {rule!r}")
    head = {k[len("net.head."):]: v for k, v in (state_dict or {}).items() if k.startswith("net.head.")}
    fits = bool(head) and not shape_table(net.head.state_dict(), head, "head.")
    if rule == "auto":
        if state_dict is None:
            rule = "random"
        elif untrained is not None:  # its values are the module's random init: never use them
            rule = untrained if (untrained != "prototypes" or train is not None) else "zero"
        else:
            rule = "keep" if fits else "zero"
    if rule == "keep":
        if not fits:
            raise ValueError(
                "head_init=keep: the checkpoint's head does not fit the target:\n"
                + "\n".join(shape_table(net.head.state_dict(), head, "head.") or ["  (no net.head.* weights)"])
                + "\nThe target has another number of outputs; use head_init=zero|prototypes|random"
            )
        net.head.load_state_dict(head)
    elif rule == "zero":
        net.head.weight.zero_()
        net.head.bias.zero_()
    elif rule == "prototypes":
        if Objective(task).regression or train is None:
            raise ValueError("head_init=prototypes applies to classification targets only; use zero or random")
        mu = class_prototypes(net, *train, ways=net.head.out_features)
        net.head.weight.copy_(2 * mu)
        net.head.bias.copy_(-(mu * mu).sum(1))
    return rule


def metasgd_step_sizes(net: MetaNet, state_dict: Mapping[str, Tensor], ckpt_name: str) -> dict[str, Tensor]:
    """Meta-SGD's learned step sizes (``inner_lrs.*``) as per-parameter gradient multipliers,
    keyed by ``net.`` parameter name. A parameter without one (ANIL-style: body not adapted)
    gets none; a re-initialised head of another shape gets the mean of its old step sizes.
    Negative step sizes (gradient ascent, which Meta-SGD may learn for its few inner steps) are
    clamped to 0: repeated over many fine-tuning steps they diverge, so those entries stay put."""
    alphas = {"net." + k[len("inner_lrs."):].replace("__", "."): v for k, v in state_dict.items()
              if k.startswith("inner_lrs.")}
    if not alphas:
        raise ValueError(f"metasgd_lrs=true but {ckpt_name} has no learned step sizes (inner_lrs.*): it is not a "
                         "Meta-SGD checkpoint; set metasgd_lrs=false")
    scales = {}
    for name, p in net.named_parameters(prefix="net"):
        a = alphas.get(name)
        if a is None:
            continue
        scales[name] = (a if a.shape == p.shape else torch.full_like(p, float(a.mean()))).clamp_min(0)
    return scales
