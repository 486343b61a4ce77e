"""Stage 1: meta-train a learner from a Hydra config (``train``), or test a checkpoint (``evaluate``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf

import metaft.algorithms.catalogue as catalogue
from metaft.algorithms.episodic import MetaLearner
from metaft.algorithms.warm_start import without_init_ckpt
from metaft.data.episodic import TRAIN_STREAM, EpisodicDataModule
from metaft.data.identity import check_unseen, dataset_classes
from metaft.runtime import trainer as runtime
from metaft.runtime.callbacks import log_hparams
from metaft.runtime.data_checks import check_shapes, follow_seed, small_pool
from metaft.runtime.distributed import global_batchnorm
from metaft import checkpoint
from metaft.runtime.io import atomic_write_text
from metaft.runtime.paths import conf_dir
from metaft.runtime.progress import log_metrics
from metaft.runtime.trainer import (
    checkpoint_file,
    final_metrics,
    merged_config,
    run_dir,
    seed_everything,
    start_run,
    write_results,
)
from metaft.stages.monitor import monitor as stage_monitor


def _per_episode_heads() -> str:
    return (f"learner that builds its head from each episode ({catalogue.listed(catalogue.per_episode_head)}, or "
            f"{catalogue.listed(catalogue.zero_head_capable)} with algorithm.zero_head=true)")


def build(cfg: DictConfig) -> tuple[EpisodicDataModule, MetaLearner]:
    """Instantiate the datamodule and the learner (with its model) from a composed config."""
    dm: EpisodicDataModule = hydra.utils.instantiate(cfg.dataset)
    net = hydra.utils.instantiate(cfg.model)
    if dm.inductive_only and getattr(net, "norm", None) == "transductive":
        net.norm = "inductive"  # the same weights; no query's statistics reach another's prediction
    learner: MetaLearner = hydra.utils.instantiate(cfg.algorithm, net=net, task=dm.task)
    if learner.classifies_training_classes:
        # Its labelled batches are shared out across data-parallel ranks: batch norm must use the
        # whole batch's statistics for N ranks to give the one-process update (a no-op in one
        # process). Never for episodic learners: a task's statistics stay within the task.
        global_batchnorm(net)
    ways = getattr(dm, "ways", None)
    train_ways = getattr(dm, "train_ways", ways)  # datasets without the option train on `ways`
    sized_per_episode = learner.sizes_head_per_episode
    if train_ways != ways and not sized_per_episode:
        raise ValueError(
            f"dataset.train_ways={train_ways} differs from dataset.ways={ways}, but algorithm {type(learner).__name__} "
            f"classifies with the network's own head, sized for dataset.ways; drop dataset.train_ways, or use a "
            f"{_per_episode_heads()}"
        )
    head = getattr(net, "head", None)
    if ways is not None and not sized_per_episode and isinstance(head, torch.nn.Linear) and head.out_features != ways:
        if head.out_features == 1:  # a regression network: fewer ways would not fix it
            raise ValueError(
                f"dataset.ways={ways}: model={type(net).__name__} has one output (a regression model), but this "
                f"dataset is {ways}-way classification: use a classification model, e.g. model=conv4"
            )
        raise ValueError(
            f"dataset.ways={ways} but the network's head has {head.out_features} outputs, and algorithm "
            f"{type(learner).__name__} classifies with that head: use dataset.ways={head.out_features} (for a "
            f"checkpoint, the ways it was trained on), or a {_per_episode_heads()}"
        )
    learner.check_support_size(dm.support_size("train"), dm.support_size("test"))
    learner.run_config = OmegaConf.to_container(cfg, resolve=True)
    return dm, learner


def make_trainer(cfg: DictConfig, out: Path, monitor: str | None = None, mode: str = "min",
                 callbacks: Sequence[Callback] = ()) -> L.Trainer:
    """The runtime's Trainer with stage 1's monitor (throughput, step sizes, images)."""
    return runtime.make_trainer(cfg, out, monitor, mode, [stage_monitor(cfg), *callbacks])


def check_recipe() -> None:
    """An experiment with per-algorithm recipes (``conf/recipe/<experiment>/``) must have one for
    the chosen algorithm: without it the run would silently use settings meant for no protocol."""
    if not HydraConfig.initialized():
        return
    choices = HydraConfig.get().runtime.choices
    experiment, algorithm = choices.get("experiment"), choices.get("algorithm")
    recipes = conf_dir() / "recipe" / str(experiment)
    if experiment in (None, "null") or not recipes.is_dir() or (recipes / f"{algorithm}.yaml").is_file():
        return
    have = ", ".join(sorted(p.stem for p in recipes.glob("*.yaml")))
    raise ValueError(
        f"experiment={experiment} has no recipe for algorithm={algorithm}: write conf/recipe/{experiment}/{algorithm}.yaml "
        f"(its settings for this protocol; it may include another recipe through its defaults list), or choose one of: {have}"
    )


def train(cfg: DictConfig) -> dict[str, Any]:
    """Meta-train (or resume), test the best checkpoint, write ``results.json``."""
    check_recipe()
    cfg, resume, out = start_run(cfg)
    classes = dataset_classes(cfg.dataset)  # split lists checked disjoint before any data is read
    dm, learner = build(cfg)
    check_shapes(dm, ("train", "val", "test") if cfg.test else ("train", "val"))  # all at once, before the run
    learner.trained_classes = classes.stored() if classes is not None else None
    if learner.classifies_training_classes and learner.classifier is None:
        # Made here, in the launching process, rather than in the learner's setup: spawned ranks would
        # draw its initial weights from their own random state, so N ranks would not start (and
        # so not train) as one process does.
        learner.make_classifier(dm.num_classes("train"))
    monitor_mode = "min" if learner.metric_name == "mse" else "max"
    trainer = make_trainer(cfg, out, monitor=f"val/{learner.metric_name}", mode=monitor_mode,
                           callbacks=[EpisodeScores(out, "test")])
    trainer.fit(learner, datamodule=dm, ckpt_path=resume, weights_only=True)
    results: dict[str, Any] = final_metrics(trainer, "val/")
    if cfg.test:
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if best:
            trainer.test(learner, datamodule=dm, ckpt_path=best, weights_only=True, verbose=False)
        else:
            trainer.test(learner, datamodule=dm, verbose=False)
        results.update(final_metrics(trainer, "test/"))
        log_metrics(f"test of {'the best checkpoint' if best else 'the final weights'}", final_metrics(trainer, "test/"))
        results["ckpt"] = str(Path(best).resolve()) if best else None
        results["test_episodes_fingerprint"] = dm.fingerprint("test")
        pool = small_pool(dm, "test", learner.metric_name)
        if pool is not None:
            results["small_pool"] = pool
    results["batch_norm"] = learner.batch_norm()
    results["train_stream"] = TRAIN_STREAM
    log_hparams(trainer, cfg, results)
    return write_results(out, results)


class EpisodeScores(Callback):
    """Writes ``{split}_episodes.csv`` at the end of the ``split`` evaluation: each episode's
    metric and loss after the last inner step, by episode index, so that two checkpoints scored
    on the same episodes can be compared pairwise (``python -m metaft.compare``). A callback, so
    that it runs where the evaluation ran (spawned ranks included); global rank 0 writes."""

    def __init__(self, out: Path, split: str) -> None:
        self.out, self.split = out, split

    def write(self, trainer: L.Trainer, learner: MetaLearner, split: str) -> None:
        if split != self.split or trainer.global_rank != 0 or split not in learner.episode_scores:
            return
        metric, loss = learner.episode_scores[split]
        order = trainer.datamodule.gathered_order(split)
        if len(order) != len(metric):
            raise RuntimeError(f"{split}: {len(metric)} per-episode scores for {len(order)} episodes")
        rows = sorted(zip(order.tolist(), metric[:, -1].tolist(), loss[:, -1].tolist()))
        text = f"episode,{learner.metric_name},loss\n" + "".join(f"{i},{m!r},{l!r}\n" for i, m, l in rows)
        atomic_write_text(self.out / f"{split}_episodes.csv", text)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.write(trainer, pl_module, "val")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.write(trainer, pl_module, "test")


def check_batch_norm(trained: Any, scored: Any) -> None:
    """Only the transductive and inductive modes share weights (batch norm without running
    statistics); scoring a checkpoint in any other mode than its own is refused, with the reason."""
    was, now = (str(m.get("bn")) if m is not None and "bn" in m else None for m in (trained, scored))
    if was == now or {was, now} <= {"transductive", "inductive"}:
        return
    if was == "running":
        why = ("its running statistics are part of the model, and scoring with them is already inductive (each query "
               "normalised alone): drop the model.bn override")
    elif now == "running":
        why = ("it has no running statistics to score with: use model.bn=inductive (the support set's statistics, each "
               "query scored alone) or transductive")
    else:
        why = "the two modes have different batch-norm layers: drop the model.bn override"
    raise ValueError(f"model.bn={now} cannot score a checkpoint trained with model.bn={was}: {why}")


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Score a meta-checkpoint on the fixed test episodes (or, with ``eval_split=val``, the
    validation episodes, for choosing settings without looking at test); write ``results.json``."""
    split = str(cfg.get("eval_split", "test"))
    if split not in ("test", "val"):
        raise ValueError(f"eval_split must be test or val (the validation episodes, to choose settings), got {split!r}")
    if cfg.ckpt_path is None:
        raise ValueError("--config-name eval needs the checkpoint to test: add ckpt_path=PATH (a run directory, which "
                         "tests its best.ckpt, or a .ckpt file)")
    ckpt_path = checkpoint_file(Path(hydra.utils.to_absolute_path(str(cfg.ckpt_path))))
    ckpt = checkpoint.load(ckpt_path)
    run_cfg = merged_config(cfg, checkpoint.config(ckpt))
    follow_seed(run_cfg)  # seed=S moves the episodes, as dataset.seed=S does
    # Before loading any data: a checkpoint must not be scored on classes it has seen.
    scored = dataset_classes(run_cfg.get("dataset"))
    class_check = check_unseen(ckpt, scored, split, f"dataset {scored.dataset if scored else ''}",
                               f"ckpt_path={ckpt_path}", bool(cfg.get("allow_seen_classes", False)),
                               "Score it on classes it has not seen (another dataset, split or dataset.class_lists)")
    check_batch_norm(checkpoint.config(ckpt).get("model"), run_cfg.get("model"))
    seed_everything(run_cfg.seed)
    dm, learner = build(without_init_ckpt(run_cfg))  # the checkpoint replaces every weight
    check_shapes(dm, (split,))
    if split == "val" and not dm.has_val_split:
        raise ValueError(f"eval_split=val: {type(dm).__name__} has no validation episodes (its val split would be its "
                         "test); choose settings on the training dataset's validation split (drop the dataset override)")
    try:
        learner.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise ValueError(
            f"ckpt_path={ckpt_path} does not fit algorithm={run_cfg.algorithm._target_} with "
            f"model={run_cfg.model._target_}: {e}"
        ) from e
    out = run_dir()
    OmegaConf.save(run_cfg, out / "eval_config.yaml")
    trainer = make_trainer(run_cfg, out, callbacks=[EpisodeScores(out, split)])
    if split == "val":
        trainer.validate(learner, datamodule=dm, verbose=False)
    else:
        trainer.test(learner, datamodule=dm, verbose=False)
    results = final_metrics(trainer, f"{split}/")
    log_metrics(split if split == "test" else "validation", results)
    pool = small_pool(dm, split, learner.metric_name)
    if pool is not None:
        results["small_pool"] = pool
    log_hparams(trainer, run_cfg, results)
    # A fixed benchmark names itself (Lake's official runs, or built ones), so no number is reported
    # under another benchmark's name.
    named = dm.describe() if hasattr(dm, "describe") else {}
    return write_results(out, results, ckpt=str(ckpt_path), batch_norm=learner.batch_norm(), **class_check, **named,
                         **{f"{split}_episodes_fingerprint": dm.fingerprint(split)})


