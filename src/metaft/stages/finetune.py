"""Stage 2 entry: ``python train.py --config-name finetune meta_ckpt=PATH target=... [init=...]``."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
import torch
from lightning.pytorch.callbacks import EarlyStopping
from omegaconf import DictConfig, OmegaConf

from metaft.finetune.conventions import apply_conventions, meta_conventions
from metaft.data.identity import check_unseen, target_classes
from metaft.finetune.targets import SupervisedTarget
from metaft.finetune.monitor import FineTuneFigures
from metaft.finetune.module import FineTuner, init_head, load_body, metasgd_step_sizes, untrained_head_rule
import metaft.algorithms.catalogue as catalogue
from metaft import checkpoint
from metaft.runtime.progress import log_metrics
from metaft.data.episodic import TRAIN_STREAM
from metaft.runtime.trainer import checkpoint_file, final_metrics, make_trainer, start_run, write_results

log = logging.getLogger(__name__)


INIT_KINDS = ("random", "pretrained", "meta")


def resolve_init(cfg: DictConfig) -> tuple[str, str | None]:
    """(kind, checkpoint path) from ``init`` and ``meta_ckpt`` / ``checkpoints``.

    ``init`` is ``random``, ``pretrained``, ``meta``, or a name in ``checkpoints`` (the study's
    mapping init-name -> path; ``pretrained`` there is the pre-training baseline, any other name
    a meta-learner until ``_check_kind`` reads its checkpoint). ``meta_ckpt`` wins over the mapping."""
    name = str(cfg.init)
    mapping = cfg.get("checkpoints") or {}
    path = cfg.get("meta_ckpt") or mapping.get(name)
    if name == "random":
        return "random", None  # a meta_ckpt given here only supplies the architecture (see build)
    if name not in INIT_KINDS and name not in mapping:
        raise ValueError(f"init={name}: use random, pretrained, meta or a name in checkpoints "
                         f"({', '.join(mapping) or 'empty'})")
    if not path:
        # checkpoints.<name> is the study's mapping: named only for the study's own init names.
        alt = "" if name in INIT_KINDS else f" (or checkpoints.{name}=PATH)"
        raise ValueError(f"init={name} needs a checkpoint: give meta_ckpt=PATH{alt}")
    # A stage-1 run directory stands for its checkpoint, as ckpt_path takes one.
    path = checkpoint_file(Path(hydra.utils.to_absolute_path(str(path))), "meta_ckpt", use="fine-tuning from")
    return ("pretrained" if name == "pretrained" else "meta"), str(path)


def _check_kind(kind: str, ckpt_cfg: dict[str, Any], path: str, name: str) -> str:
    """The init's kind, checked: ``init=pretrained`` needs a pre-training checkpoint (its learner
    declares ``classifies_training_classes``), ``init=meta`` another; a study name
    (``checkpoints.<name>``) takes its checkpoint's kind, so a pre-training variant (e.g.
    ``baselinepp``) can have its own line."""
    algo = str((ckpt_cfg.get("algorithm") or {}).get("_target_", ""))
    is_pretrain = catalogue.learner_class(ckpt_cfg, f"meta_ckpt={path}").classifies_training_classes
    if name not in INIT_KINDS:
        return "pretrained" if is_pretrain else "meta"
    if kind == "pretrained" and not is_pretrain:
        raise ValueError(f"init=pretrained but meta_ckpt={path} was trained by {algo}; give a checkpoint of a "
                         f"pre-training algorithm ({catalogue.listed(catalogue.pretrains)}), or use init=meta")
    if kind == "meta" and is_pretrain:
        raise ValueError(f"init=meta but meta_ckpt={path} is a supervised pre-training checkpoint; use init=pretrained")
    return kind


def check_inputs(net: torch.nn.Module, dm: SupervisedTarget, model_cfg: dict, meta_dataset: dict | None) -> None:
    """One forward of the training inputs, so a model that cannot read the target's data fails
    here with a message rather than deep inside the first training step."""
    x = dm.splits["train"][0]
    try:
        with torch.no_grad():
            net(x)
    except RuntimeError as e:
        raise ValueError(
            f"the model {model_cfg.get('_target_')} cannot read the target's inputs (shape {list(x.shape[1:])}, "
            f"target={type(dm).__name__}): {e}. Fine-tune on data like the meta-training data"
            + (f" ({meta_dataset.get('_target_')})" if meta_dataset else "")
            + ", or give a matching model (model=..., e.g. model.image_size / model.in_channels)"
        ) from e


def model_config(cfg: DictConfig, ckpt_cfg: dict[str, Any], from_checkpoint: bool) -> dict[str, Any]:
    """The fine-tuning model's config. Weights from a checkpoint: the checkpoint's own model, with
    this command's explicit ``model``/``model.*`` overrides on top (as ``--config-name eval`` does),
    so a preset's default model (a study's plain Conv4) cannot contradict the checkpoint's
    architecture. ``init=random``: ``model`` if set, else the checkpoint's architecture."""
    if from_checkpoint and ckpt_cfg.get("model"):
        model = OmegaConf.create(dict(ckpt_cfg["model"]))
        overrides = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
        for override in overrides:
            key = override.split("=", 1)[0].lstrip("+~")
            if key == "model":  # a group choice replaces the whole node
                model = OmegaConf.create(OmegaConf.to_container(cfg.model, resolve=True))
            elif key.startswith("model."):
                OmegaConf.update(model, key[len("model."):], OmegaConf.select(cfg, key), force_add=True)
        return OmegaConf.to_container(model, resolve=True)
    if cfg.get("model") is not None:
        return OmegaConf.to_container(cfg.model, resolve=True)
    if ckpt_cfg.get("model"):
        return dict(ckpt_cfg["model"])  # fine-tune the architecture that was meta-trained
    raise ValueError("init=random without a checkpoint needs a model: give model=mlp|conv4 (or meta_ckpt=PATH, "
                     "whose architecture is then used)")


def _given(prefix: str) -> set[str]:
    """Keys under ``prefix`` that this command line sets (``target.mean=...`` -> ``mean``)."""
    overrides = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    keys = (o.split("=", 1)[0].lstrip("+~") for o in overrides)
    return {k[len(prefix):] for k in keys if k.startswith(prefix)}


def build(cfg: DictConfig) -> tuple[SupervisedTarget, FineTuner, dict[str, Any]]:
    """The target, the initialised fine-tuner and what was done (for results.json)."""
    kind, path = resolve_init(cfg)
    arch_path = path or cfg.get("meta_ckpt") or None
    ckpt = checkpoint.load(hydra.utils.to_absolute_path(arch_path), what="meta_ckpt") if arch_path else None
    ckpt_cfg = checkpoint.config(ckpt) if ckpt else {}
    # The target's images are prepared as the checkpoint's meta-training images were (channels,
    # size, mean/std), unless this command says otherwise.
    apply_conventions(cfg.target, meta_conventions(ckpt_cfg), _given("target."))
    # Before any target data is read: no target class may be one the checkpoint has seen.
    class_check = check_unseen(ckpt, target_classes(cfg.target), "test", "the target", f"meta_ckpt={path}",
                               bool(cfg.get("allow_seen_classes", False)), "Draw the target from classes it has not "
                               "seen (target.split=test, the checkpoint's own split, or other classes)") if path else {}
    dm: SupervisedTarget = hydra.utils.instantiate(cfg.target)
    if path:
        kind = _check_kind(kind, ckpt_cfg, path, str(cfg.init))
    model_cfg = model_config(cfg, ckpt_cfg, from_checkpoint=path is not None)
    model_cfg["out_features"] = dm.num_outputs
    net = hydra.utils.instantiate(model_cfg)
    check_inputs(net, dm, model_cfg, ckpt_cfg.get("dataset"))
    state = ckpt["state_dict"] if (ckpt and path) else None
    if state is not None:
        load_body(net, state, f"meta_ckpt={path}", ckpt_cfg.get("model"), model_cfg)
    untrained = untrained_head_rule(ckpt, ckpt_cfg, dm.task) if state is not None else None
    head_rule = init_head(net, str(cfg.head_init), state, dm.task, dm.splits["train"], untrained=untrained)
    scales = None
    if cfg.metasgd_lrs:
        if state is None:
            raise ValueError("metasgd_lrs=true needs a Meta-SGD checkpoint (init=meta meta_ckpt=PATH)")
        scales = metasgd_step_sizes(net, state, f"meta_ckpt={path}")
    ft = cfg.finetuner
    learner = FineTuner(net, dm.task, hydra.utils.instantiate(ft.optimizer),
                        hydra.utils.instantiate(ft.scheduler) if ft.get("scheduler") else None,
                        lr_scales=scales, grad_clip=float(ft.grad_clip))
    learner.run_config = OmegaConf.to_container(cfg, resolve=True)
    info = {"init": str(cfg.init), "init_kind": kind, "meta_ckpt": path, "head_init": head_rule,
            # Whether the checkpoint's net.head was trained (None: no checkpoint weights used).
            "head_trained": (untrained is None) if state is not None else None,
            "meta_algorithm": (ckpt_cfg.get("algorithm") or {}).get("_target_") if path else None,
            "shots": getattr(dm, "shots", None), **class_check, **dm.describe()}
    return dm, learner, info


def finetune(cfg: DictConfig) -> dict[str, Any]:
    """Fine-tune (or resume), early-stop on validation, test the best checkpoint, write results.json."""
    cfg, resume, out = start_run(cfg)
    if not isinstance(cfg.early_stopping.patience, int) or cfg.early_stopping.patience < 0:
        raise ValueError(f"early_stopping.patience must be a number of validations >= 0 (0 disables early stopping), "
                         f"got {cfg.early_stopping.patience!r}")
    dm, learner, info = build(cfg)
    monitor, mode = f"val/{learner.metric_name}", learner.objective.mode
    callbacks = [FineTuneFigures()] if OmegaConf.select(cfg, "logging.images", default=True) else []
    trainer = make_trainer(cfg, out, monitor=monitor, mode=mode, callbacks=callbacks)
    # Early stopping is conf/callbacks/finetune.yaml's early_stopping entry (absent with patience 0).
    stopper = next((c for c in trainer.callbacks if isinstance(c, EarlyStopping)), None)
    trainer.fit(learner, datamodule=dm, ckpt_path=resume, weights_only=True)
    results: dict[str, Any] = {**final_metrics(trainer, "val/"), "steps": trainer.global_step}
    results["early_stopped"] = bool(stopper is not None and stopper.wait_count >= stopper.patience
                                    and trainer.global_step < trainer.max_steps)
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if best:  # the step whose weights are tested
        results["best_step"] = int(checkpoint.load(best, what="the best checkpoint")["global_step"])
    if results["early_stopped"]:
        log.info(f"early stopping at step {trainer.global_step} of {trainer.max_steps}: {monitor} did not improve "
                 f"for {stopper.patience} validations (early_stopping.patience; 0 disables it); best at step "
                 f"{results.get('best_step', '?')}")
    if cfg.test:
        trainer.test(learner, datamodule=dm, ckpt_path=best or None, weights_only=True, verbose=False)
        results.update(final_metrics(trainer, "test/"))
        log_metrics("test of the best checkpoint", final_metrics(trainer, "test/"))  # steps in natural order
        results["ckpt"] = str(Path(best).resolve()) if best else None
    return write_results(out, results, train_stream=TRAIN_STREAM, **info)
