"""Supervised pre-training: the non-meta baselines "Baseline" and "Baseline++" of Chen et al. 2019.

Training is ordinary classification over all training classes with mini-batches, by a linear
classifier (Baseline) or a cosine-similarity one (Baseline++, ``classifier=cosine``); evaluation
fits a new head of the same kind per episode on the frozen body's features with the shared inner
loop ``adapt`` (or, ``eval_head=logistic``, RFS's logistic regression on L2-normalised features),
so the episodes are scored through the same metric path as every meta-learner.
"""
from __future__ import annotations

from typing import Any, Literal, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaft.algorithms.episodic import check_positive
from metaft.algorithms.feature_head import FeatureHeadLearner, one_hot
from metaft.algorithms.probes import logistic_regression, probe_logits
from metaft.core.inner_loop import Params, adapt
from metaft.data.episodic import EpisodicDataModule
from metaft.data.episode import Episode
from metaft.models.heads import CosineClassifier, cosine_logits

Classifier = Literal["linear", "cosine"]
EvalHead = Literal["gradient", "logistic"]


def _linear(p: Params, x: Tensor) -> Tensor:
    return F.linear(x, p["weight"], p["bias"])


class Pretrain(FeatureHeadLearner):
    """Body + a ``classifier`` over all training classes, trained on labelled batches.

    The classifier's size comes from the datamodule's ``num_classes("train")`` when fitting
    starts, or from the checkpoint when one is loaded into a fresh learner (``run.evaluate``).
    At validation and test a new head with one output per way is fitted on the support features
    by ``eval_inner_steps`` full-batch gradient steps of size ``inner_lr`` (logged per step as
    ``acc_stepN``); the body is frozen. ``linear``: the head starts at zero, so
    ``eval_inner_steps`` must be > 0. ``cosine`` (Baseline++): ``scale * cos(f, w_c)`` at the
    classifier's scale, starting from the normalised class means, so step 0 is the exact
    cosine-prototype head and the steps fit a new cosine classifier as Chen et al. do (they
    start from a random one; ``eval_inner_steps=0`` is allowed and scores the prototypes alone).

    Args:
        batch_size: examples per training batch (over all devices).
        classifier: ``linear`` (Baseline) or ``cosine`` (Baseline++).
        scale: the cosine classifier's scale, its value throughout unless ``learn_scale``
            (Chen et al. fix it; default 10, their value for more than 200 classes).
        learn_scale: learn the cosine classifier's scale, starting at ``scale``.
        eval_head: ``gradient`` (the head above, fitted by ``eval_inner_steps`` steps) or
            ``logistic``: RFS's probe (Tian et al. 2020), multinomial logistic regression with
            scikit-learn's default L2 penalty (C=1) on L2-normalised features, solved exactly
            (``algorithms.probes``), for any classifier; ``eval_inner_steps`` is then not used.
        **kwargs: ``MetaLearner``'s arguments; ``inner_steps`` must be 0 (no inner loop in training).
    """

    fits_head_at_eval = True
    classifies_training_classes = True

    def __init__(self, batch_size: int = 64, classifier: Classifier = "linear", scale: float | None = None,
                 learn_scale: bool = False, eval_head: EvalHead = "gradient", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if eval_head not in ("gradient", "logistic"):
            raise ValueError(f"algorithm.eval_head must be 'gradient' (a head fitted by eval_inner_steps steps) or "
                             f"'logistic' (RFS's logistic regression), got {eval_head!r}")
        self.eval_head = eval_head
        if eval_head == "logistic":
            self.eval_inner_steps = 0  # solved exactly: one set of query logits, whatever the gradient head's steps
        if batch_size <= 0:
            raise ValueError(f"algorithm.batch_size must be > 0, got {batch_size}")
        if classifier not in ("linear", "cosine"):
            raise ValueError(f"algorithm.classifier must be 'linear' (Baseline) or 'cosine' (Baseline++), got {classifier!r}")
        if classifier == "linear" and (scale is not None or learn_scale):
            raise ValueError("algorithm.scale and algorithm.learn_scale set the cosine classifier's scale: set "
                             "algorithm.classifier=cosine (algorithm=baselinepp), or drop them")
        if classifier == "linear" and eval_head == "gradient" and not self.eval_inner_steps:
            raise ValueError("algorithm=pretrain fits a new head at evaluation: set algorithm.eval_inner_steps > 0, "
                             "or algorithm.eval_head=logistic (solved exactly, no steps)")
        self.batch_size = int(batch_size)
        self.classifier_type = classifier
        self.scale = 10.0 if scale is None else float(scale)
        if classifier == "cosine":
            check_positive(scale=self.scale)
        self.learn_scale = bool(learn_scale)
        self.classifier: nn.Linear | CosineClassifier | None = None

    def make_classifier(self, num_classes: int) -> None:
        body = next(self.net.parameters())
        d = self.net.feature_dim
        if self.classifier_type == "cosine":
            head: nn.Module = CosineClassifier(d, num_classes, self.scale, self.learn_scale)
        else:
            head = nn.Linear(d, num_classes)
        self.classifier = head.to(dtype=body.dtype, device=body.device)

    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        dm = self.trainer.datamodule
        if not isinstance(dm, EpisodicDataModule):
            raise ValueError("algorithm=pretrain needs an EpisodicDataModule (trainer.fit(..., datamodule=dm))")
        dm.labelled_batch_size = self.batch_size  # its train loader now yields (x, y) batches
        n = dm.num_classes("train")
        if self.classifier is None:
            self.make_classifier(n)
        elif self.classifier.out_features != n:
            raise ValueError(
                f"the pre-training classifier has {self.classifier.out_features} classes but the dataset's "
                f"training split has {n}; train a new run for this dataset"
            )

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        # A freshly built learner (run.evaluate) has no classifier yet: size it from the checkpoint.
        if self.classifier is None and "classifier.weight" in state_dict:
            self.make_classifier(state_dict["classifier.weight"].shape[0])
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # ------------------------------------------------------------------------------ training
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        if isinstance(batch, Episode):
            raise TypeError("algorithm=pretrain trains on labelled (x, y) batches, but the train loader "
                            "yielded episodes; fit it with its datamodule (Pretrain.setup switches it)")
        x, y = batch
        return self.outer_step(lambda: self.batch_backward(x, y), y, self.log_gradient_norm)

    def batch_backward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-entropy of the classifier over all training classes on one labelled batch,
        backpropagated; (loss, logits). A NaN loss gives NaN gradients, which the outer step catches."""
        if self.classifier is None:
            raise RuntimeError("Pretrain.setup('fit') has not run: the classifier's size is unknown")
        out = self.classifier(self.net.body(x))
        loss = self.loss_fn(out, y)
        self.backward_(loss)
        return loss, out

    # ---------------------------------------------------------------------------- evaluation
    def eval_scale(self) -> Tensor | float:
        """The cosine head's scale at evaluation: the trained classifier's (fixed or learned), or
        ``scale`` before there is one."""
        return self.scale if self.classifier is None else self.classifier.scale.detach()

    def query_outputs(self, episode: Episode, steps: int, first_order: bool, all_steps: bool = False) -> Tensor:
        if self.eval_head == "gradient":
            return super().query_outputs(episode, steps, first_order, all_steps)
        # The logistic probe is batched over tasks already, and its Newton iterations stop on
        # data-dependent tests that vmap cannot run: all tasks in one call instead.
        ways, meta, fs, fq = self.task_features(episode)
        out = self.precise_head(self._logistic)(meta, fs, episode.support_y, fq, ways)
        return out.unsqueeze(1) if all_steps else out

    @staticmethod
    def _logistic(meta: dict[str, Any], fs: Tensor, sy: Tensor, fq: Tensor, ways: int) -> Tensor:
        """Query logits ``[tasks, Q, ways]`` of RFS's probe fitted to every task's support set."""
        with torch.no_grad():  # the body is frozen at evaluation: nothing to differentiate
            w, b = logistic_regression(fs.detach(), sy, ways)
            return probe_logits(fq.detach(), w, b)

    def head_logits(self, meta: dict[str, Any], fs: Tensor, sy: Tensor, fq: Tensor, ways: int, steps: int) -> Tensor:
        if self.eval_head == "logistic":  # one task, outside vmap (query_outputs takes all at once)
            return self._logistic(meta, fs[None], sy[None], fq[None], ways)
        fs, fq = fs.detach(), fq.detach()  # the body is frozen; only the new head is fitted
        if self.classifier_type == "cosine":
            # Not from zero: the direction of a zero weight is undefined (F.normalize's gradient
            # there is 1/eps). The normalised class means are a deterministic, already useful start.
            scale = self.eval_scale()

            def forward(p: Params, x: Tensor) -> Tensor:
                return cosine_logits(x, p["weight"], scale)

            start = {"weight": F.normalize(one_hot(sy, ways, fs.dtype).T @ fs, dim=-1)}
        else:
            forward, start = _linear, {"weight": fs.new_zeros(ways, fs.shape[-1]), "bias": fs.new_zeros(ways)}
        trajectory = adapt(forward, start, fs, sy, self.loss_fn, steps, meta["lr"], first_order=True)
        return torch.stack([forward(p, fq) for p in trajectory])
