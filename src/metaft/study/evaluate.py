"""One initialisation on the study's target problems: loading it, checking its checkpoint, a
linear probe on frozen features and the learner's own adaptation (full fine-tuning and the
settings chosen on validation problems: ``choices``)."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from metaft.algorithms.episodic import MetaLearner
from metaft.algorithms.warm_start import without_init_ckpt
from metaft.core.objective import Objective
from metaft.data.identity import check_unseen, configured_class, dataset_classes
from metaft.data.episode import Episode
from metaft.models.nets import MetaNet
from metaft import checkpoint as checkpoint_format
from metaft.study import problems as P

ADAPTATIONS = ("probe", "finetune", "inner")


class Init:
    """A network to adapt (and the learner it was trained with, if any), from a stage-1
    checkpoint or, for the random init, the study's model seeded by the stage-1 seed."""

    def __init__(self, name: str, seed: int, ckpt: Path | None, cfg: DictConfig, objective: Objective) -> None:
        self.name, self.seed, self.ckpt = name, seed, ckpt
        self.learner: MetaLearner | None = None
        if ckpt is None:
            torch.manual_seed(seed)
            self.net: MetaNet = hydra.utils.instantiate(cfg.random_model)
            self.config: dict[str, Any] = {"model": OmegaConf.to_container(cfg.random_model)}
        else:
            data = checkpoint_format.load(ckpt, what=f"the checkpoint of init {name}")
            self.config = checkpoint_format.config(data)
            self.net = hydra.utils.instantiate(self.config["model"])
            algorithm = without_init_ckpt(self.config)["algorithm"]  # the checkpoint replaces every weight
            self.learner = hydra.utils.instantiate(algorithm, net=self.net, task=objective.kind)
            self.learner.load_state_dict(data["state_dict"])
            self.learner.eval()
        if cfg.adapt.bn == "inductive" and self.net.norm == "transductive":
            self.net.norm = "inductive"  # the same weights; the learner's queries get support statistics
        self.net.eval()


def check(init: str, checkpoint: Mapping[str, Any], cfg: DictConfig) -> None:
    """Refuse a checkpoint trained on another kind of dataset or on classes of the study's problems,
    or whose model does not take the target's inputs, naming the init and the mismatch."""
    config = checkpoint_format.config(checkpoint)
    want, have = cfg.dataset, config.get("dataset", {})
    problems = []
    if configured_class(have) is not configured_class(want):  # the class itself: a path may name it two ways
        problems.append(f"dataset {have.get('_target_')} (the study's: {want._target_})")
    scored = dataset_classes(want)
    # The test problems are scored; the validation problems choose fine-tuning's settings.
    for split in ("val", str(cfg.target.get("split", "test"))):
        check_unseen(checkpoint, scored, split, f"the {cfg.name} study's {split} problems", f"init {init}'s checkpoint",
                     bool(cfg.get("allow_seen_classes", False)), "Give a checkpoint trained on the study's split")
    model, ref = config.get("model", {}), cfg.random_model
    for key in ("in_channels", "image_size", "in_features"):
        if key in ref and model.get(key) != ref[key]:
            problems.append(f"model.{key}={model.get(key)} (the study's inputs need {ref[key]})")
    if problems:
        raise ValueError(f"init {init}: its checkpoint does not fit the {cfg.name} study: " + "; ".join(problems))


def probe(init: Init, episode: Episode, cfg: DictConfig, objective: Objective, reg: float | None = None) -> np.ndarray:
    """The probe's metric per problem, at regularisation ``reg`` (``C`` or ``lam``; default: the
    config's own, a single number)."""
    if objective.regression:
        lam = float(cfg.adapt.probe.lam if reg is None else reg)
        return P.ridge_problems(init.net, episode, lam=lam, bn=cfg.adapt.bn).numpy()
    C = float(cfg.adapt.probe.C if reg is None else reg)
    return P.probe_problems(init.net, episode, head=cfg.adapt.probe.head, bn=cfg.adapt.bn, C=C).double().numpy()


def inner(init: Init, episode: Episode, ways: int | None, objective: Objective,
          steps: int | None = None) -> np.ndarray | None:
    """The learner's own adaptation (its inner loop, prototypes, SVM or fitted head) at its test
    setting, or ``steps`` steps (``choices.choose_inner``'s count; its step size is set around this
    call); ``None`` when there is no learner or its head cannot take ``ways`` classes."""
    learner = init.learner
    if learner is None:
        return None
    if ways is not None and not learner.sizes_head_per_episode and learner.net.head.out_features != ways:
        return None
    metric, _ = learner.adaptation_curve(episode, learner.eval_inner_steps if steps is None else steps)
    return metric[:, -1].double().numpy()
