"""Entry points behind ``train.py``: build the pieces from a Hydra config, then fit / test."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from metaft.algorithms.base import MetaLearner
from metaft.callbacks import log_hparams, monitoring_callbacks
from metaft.data.datamodule import EpisodicDataModule
from metaft.utils.io import load_checkpoint, write_json

log = logging.getLogger(__name__)

_GROUPS = ("algorithm", "dataset", "model")


class AtomicLastCheckpoint(Callback):
    """Keeps ``checkpoints/last.ckpt`` fresh every ``every_n_train_steps`` meta-steps and after
    every validation; written to a temporary file and renamed, so a kill mid-save never leaves
    a corrupt ``last.ckpt``."""

    def __init__(self, dirpath: str | Path, every_n_train_steps: int) -> None:
        self.path = Path(dirpath) / "last.ckpt"
        self.every = int(every_n_train_steps)

    def save(self, trainer: L.Trainer) -> None:
        tmp = self.path.with_name(".last.ckpt.tmp")
        trainer.save_checkpoint(tmp)  # rank 0 writes; every rank must call it
        if trainer.is_global_zero:
            os.replace(tmp, self.path)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self.every > 0 and trainer.global_step % self.every == 0:
            self.save(trainer)

    def on_validation_end(self, trainer: L.Trainer, *args: Any) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self.save(trainer)

    def on_train_end(self, trainer: L.Trainer, *args: Any) -> None:
        self.save(trainer)


def run_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir)


def build(cfg: DictConfig) -> tuple[EpisodicDataModule, MetaLearner]:
    """Instantiate the datamodule and the learner (with its model) from a composed config."""
    dm: EpisodicDataModule = hydra.utils.instantiate(cfg.dataset)
    net = hydra.utils.instantiate(cfg.model)
    learner: MetaLearner = hydra.utils.instantiate(cfg.algorithm, net=net, task=dm.task)
    learner.run_config = OmegaConf.to_container(cfg, resolve=True)
    return dm, learner


def make_trainer(cfg: DictConfig, out: Path, monitor: str | None = None, mode: str = "min") -> L.Trainer:
    callbacks: list[Callback] = monitoring_callbacks(cfg)
    if monitor is not None:
        ckpt_dir = out / "checkpoints"
        callbacks += [
            ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=monitor, mode=mode, save_top_k=1,
                            auto_insert_metric_name=False, enable_version_counter=False),
            AtomicLastCheckpoint(ckpt_dir, cfg.checkpoint.every_n_train_steps),
        ]
    logger = TensorBoardLogger(save_dir=str(out), name="tensorboard", version="", default_hp_metric=False)
    return L.Trainer(**OmegaConf.to_container(cfg.trainer, resolve=True), default_root_dir=str(out),
                     logger=logger, callbacks=callbacks)


def final_metrics(trainer: L.Trainer, prefix: str) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(prefix)}


def write_results(out: Path, metrics: dict[str, float], **extra: Any) -> dict[str, Any]:
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    results = {**metrics, **extra, "overrides": overrides}
    write_json(out / "results.json", results)
    return results


def train(cfg: DictConfig) -> dict[str, Any]:
    """Meta-train, test the best checkpoint, write ``results.json``; return the results."""
    L.seed_everything(int(cfg.seed), workers=True)
    out = run_dir()
    dm, learner = build(cfg)
    monitor_mode = "min" if learner.metric_name == "mse" else "max"
    trainer = make_trainer(cfg, out, monitor=f"val/{learner.metric_name}", mode=monitor_mode)
    trainer.fit(learner, datamodule=dm, ckpt_path=cfg.ckpt_path)
    results: dict[str, Any] = final_metrics(trainer, "val/")
    if cfg.test:
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        ckpt = best if best else None
        trainer.test(learner, datamodule=dm, ckpt_path=ckpt, weights_only=True) if ckpt else trainer.test(learner, datamodule=dm)
        results.update(final_metrics(trainer, "test/"))
        results["ckpt"] = str(Path(ckpt).resolve()) if ckpt else None
    log_hparams(trainer, cfg, results)
    return write_results(out, results)


def merged_eval_config(cfg: DictConfig, stored: dict) -> DictConfig:
    """The training run's config with the eval command's overrides applied on top."""
    merged = OmegaConf.create(stored)
    for override in HydraConfig.get().overrides.task:
        key = override.split("=", 1)[0].lstrip("+~")
        if key in ("ckpt_path",) or key.startswith("hydra."):
            continue
        if key in _GROUPS:  # a group choice, e.g. dataset=omniglot_runs: take the whole node
            merged[key] = cfg[key]
        else:
            OmegaConf.update(merged, key, OmegaConf.select(cfg, key), force_add=True)
    merged.task_name = cfg.task_name
    return merged


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Test a meta-checkpoint on the fixed test episodes; write ``results.json``."""
    ckpt_path = Path(hydra.utils.to_absolute_path(str(cfg.ckpt_path)))
    ckpt = load_checkpoint(ckpt_path)
    run_cfg = merged_eval_config(cfg, ckpt["metaft_config"])
    L.seed_everything(int(run_cfg.seed), workers=True)
    dm, learner = build(run_cfg)
    try:
        learner.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise ValueError(
            f"ckpt_path={ckpt_path} does not fit algorithm={run_cfg.algorithm._target_} with "
            f"model={run_cfg.model._target_}: {e}"
        ) from e
    out = run_dir()
    OmegaConf.save(run_cfg, out / "eval_config.yaml")
    trainer = make_trainer(run_cfg, out)
    trainer.test(learner, datamodule=dm)
    results = final_metrics(trainer, "test/")
    log_hparams(trainer, run_cfg, results)
    return write_results(out, results, ckpt=str(ckpt_path))


def main(cfg: DictConfig) -> float | None:
    results = evaluate(cfg) if cfg.task_name == "eval" else train(cfg)
    if cfg.get("optimized_metric"):
        return results[cfg.optimized_metric]
    return None
