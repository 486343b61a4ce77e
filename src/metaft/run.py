"""Entry points behind ``train.py``: build the pieces from a Hydra config, then fit / test."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from metaft.algorithms.base import MetaLearner, NonFiniteLossError
from metaft.algorithms.feature_head import FeatureHeadLearner
from metaft.callbacks import log_hparams, monitoring_callbacks
from metaft.data.datamodule import EpisodicDataModule
from metaft.progress import progress_callbacks
from metaft.utils.io import load_checkpoint, write_json

log = logging.getLogger(__name__)

_GROUPS = ("algorithm", "dataset", "model", "target")
_PER_EPISODE_HEADS = ("learner that builds its head from each episode (protonet, metaoptnet, pretrain, or maml, fomaml, "
                     "anil, reptile with algorithm.zero_head=true)")


def ensure_finite_weights(trainer: L.Trainer) -> None:
    """Refuse to save non-finite weights over the last good checkpoint."""
    module = trainer.lightning_module
    if not all(torch.isfinite(p).all() for p in module.parameters()):
        raise NonFiniteLossError(
            f"the weights became NaN/Inf after meta-step {trainer.global_step}; the last good checkpoint is "
            "kept. Likely cause: a step size too large (algorithm.inner_lr or algorithm.optimizer.lr)."
        )


def atomic_save(trainer: L.Trainer, path: Path) -> None:
    """``trainer.save_checkpoint`` to a temporary file, then rename: a kill mid-save never leaves a
    corrupt checkpoint. Every rank must call it (rank 0 writes)."""
    ensure_finite_weights(trainer)
    tmp = path.with_name(f".{path.name}.tmp")
    trainer.save_checkpoint(tmp, weights_only=False)
    if trainer.is_global_zero:
        os.replace(tmp, path)


class AtomicModelCheckpoint(ModelCheckpoint):
    """Lightning's best-by-validation checkpointing, written atomically."""

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        atomic_save(trainer, Path(filepath))
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath


class AtomicLastCheckpoint(Callback):
    """Keeps ``checkpoints/last.ckpt`` fresh every ``every_n_train_steps`` meta-steps, after every
    validation and at the end, so a killed run loses at most N steps."""

    def __init__(self, dirpath: str | Path, every_n_train_steps: int) -> None:
        if isinstance(every_n_train_steps, bool) or not isinstance(every_n_train_steps, int) or every_n_train_steps < 0:
            raise ValueError(f"checkpoint.every_n_train_steps must be a number of steps >= 0 (0: only after validation "
                             f"and at the end), got {every_n_train_steps!r}")
        self.path = Path(dirpath) / "last.ckpt"
        self.every = every_n_train_steps
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self.every > 0 and trainer.global_step % self.every == 0:
            atomic_save(trainer, self.path)

    def on_validation_end(self, trainer: L.Trainer, *args: Any) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            atomic_save(trainer, self.path)

    def on_train_end(self, trainer: L.Trainer, *args: Any) -> None:
        atomic_save(trainer, self.path)


def run_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir)


def build(cfg: DictConfig) -> tuple[EpisodicDataModule, MetaLearner]:
    """Instantiate the datamodule and the learner (with its model) from a composed config."""
    dm: EpisodicDataModule = hydra.utils.instantiate(cfg.dataset)
    net = hydra.utils.instantiate(cfg.model)
    learner: MetaLearner = hydra.utils.instantiate(cfg.algorithm, net=net, task=dm.task)
    ways = getattr(dm, "ways", None)
    train_ways = getattr(dm, "train_ways", ways)  # datasets without the option train on `ways`
    # A zero head takes each episode's size; a learned head (or Meta-SGD's step sizes for it) has one.
    sized_per_episode = isinstance(learner, FeatureHeadLearner) or (learner.zero_head and learner.inner_lrs is None)
    if train_ways != ways and not sized_per_episode:
        raise ValueError(
            f"dataset.train_ways={train_ways} differs from dataset.ways={ways}, but algorithm {type(learner).__name__} "
            f"classifies with the network's own head, sized for dataset.ways; drop dataset.train_ways, or use a "
            f"{_PER_EPISODE_HEADS}"
        )
    head = getattr(net, "head", None)
    if ways is not None and not sized_per_episode and isinstance(head, torch.nn.Linear) and head.out_features != ways:
        raise ValueError(
            f"dataset.ways={ways} but the network's head has {head.out_features} outputs, and algorithm "
            f"{type(learner).__name__} classifies with that head: use dataset.ways={head.out_features} (for a "
            f"checkpoint, the ways it was trained on), or a {_PER_EPISODE_HEADS}"
        )
    learner.run_config = OmegaConf.to_container(cfg, resolve=True)
    return dm, learner


def make_trainer(cfg: DictConfig, out: Path, monitor: str | None = None, mode: str = "min",
                 callbacks: Sequence[Callback] = ()) -> L.Trainer:
    callbacks = [*monitoring_callbacks(cfg), *callbacks]
    if monitor is not None:
        ckpt_dir = out / "checkpoints"
        callbacks += [
            AtomicModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=monitor, mode=mode, save_top_k=1,
                            auto_insert_metric_name=False, enable_version_counter=False),
            AtomicLastCheckpoint(ckpt_dir, cfg.checkpoint.every_n_train_steps),
        ]
    bar, progress = progress_callbacks(cfg)
    callbacks += progress
    logger = TensorBoardLogger(save_dir=str(out), name="tensorboard", version="", default_hp_metric=False)
    trainer_kwargs = hydra.utils.instantiate(cfg.trainer, _convert_="all")  # builds a configured strategy
    devices = trainer_kwargs.get("devices")
    if trainer_kwargs.get("accelerator") == "cpu" and isinstance(devices, int) and devices > (os.cpu_count() or 1):
        raise ValueError(f"trainer.devices={devices} CPU processes is more than this machine's {os.cpu_count()} cores; lower trainer.devices")
    if trainer_kwargs.get("enable_progress_bar") is None:
        trainer_kwargs["enable_progress_bar"] = bar
    return L.Trainer(**trainer_kwargs, default_root_dir=str(out), logger=logger,
                     callbacks=callbacks)


def final_metrics(trainer: L.Trainer, prefix: str) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(prefix)}


def write_results(out: Path, metrics: dict[str, float], **extra: Any) -> dict[str, Any]:
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    results = {**metrics, **extra, "overrides": overrides}
    write_json(out / "results.json", results)
    return results


def resolve_resume(ckpt_path: str | None, out: Path) -> tuple[Path | None, Path]:
    """(checkpoint file to resume, run dir to continue in) for ``ckpt_path``: a checkpoint file,
    a run directory, or ``last`` (this run dir's ``checkpoints/last.ckpt`` when ``hydra.run.dir``
    points at the old run, else the newest sibling run that has one)."""
    if ckpt_path is None:
        return None, out
    if str(ckpt_path) == "last":
        own = out / "checkpoints" / "last.ckpt"
        siblings = [d / "checkpoints" / "last.ckpt" for d in out.parent.iterdir() if d != out] if out.parent.is_dir() else []
        found = [own] if own.is_file() else sorted((c for c in siblings if c.is_file()), key=lambda c: c.stat().st_mtime)
        if not found:
            raise FileNotFoundError(
                f"ckpt_path=last: no checkpoints/last.ckpt in {out} or in any run dir beside it; "
                "give the run directory or the checkpoint file instead"
            )
        path = found[-1]
    else:
        path = Path(hydra.utils.to_absolute_path(str(ckpt_path)))
        if path.is_dir():
            path = path / "checkpoints" / "last.ckpt"
    run = path.parent.parent if path.parent.name == "checkpoints" else out
    if run != out:  # Hydra's new directory for this command only points at the continued run
        (out / "RESUMED_INTO.txt").write_text(f"{run}\n")
    return path, run


def seed_everything(seed: Any) -> None:
    """Lightning's seeding, with a clear error for a seed numpy cannot take."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    L.seed_everything(seed, workers=True)


def start_run(cfg: DictConfig) -> tuple[DictConfig, Path | None, Path]:
    """(config, checkpoint to resume or None, run dir) for a training stage, seeded. On resume the
    interrupted run's own config is the base, so the continuation is the same run."""
    resume, out = resolve_resume(cfg.ckpt_path, run_dir())
    if resume is not None:
        # Lightning restores the optimizer's and scheduler's state, learning rate included, so a
        # changed setting would not apply, though the saved config would claim it.
        stored = OmegaConf.create(load_checkpoint(resume)["metaft_config"])
        state_keys = ("algorithm.optimizer", "algorithm.scheduler", "finetuner.optimizer", "finetuner.scheduler")
        for override in HydraConfig.get().overrides.task:
            key = override.split("=", 1)[0].lstrip("+~")
            if key.startswith(state_keys) and OmegaConf.select(cfg, key) != OmegaConf.select(stored, key):
                raise ValueError(
                    f"{override}: resuming restores the optimizer and scheduler from the checkpoint "
                    f"({key}={OmegaConf.select(stored, key)}), so this setting would not take effect; drop it to "
                    "continue the run, or start a new run"
                )
        cfg = merged_config(cfg, OmegaConf.to_container(stored))
        log.info("resuming %s in %s", resume, out)
    seed_everything(cfg.seed)
    return cfg, resume, out


def train(cfg: DictConfig) -> dict[str, Any]:
    """Meta-train (or resume), test the best checkpoint, write ``results.json``."""
    cfg, resume, out = start_run(cfg)
    dm, learner = build(cfg)
    monitor_mode = "min" if learner.metric_name == "mse" else "max"
    trainer = make_trainer(cfg, out, monitor=f"val/{learner.metric_name}", mode=monitor_mode)
    trainer.fit(learner, datamodule=dm, ckpt_path=resume, weights_only=True)
    results: dict[str, Any] = final_metrics(trainer, "val/")
    if cfg.test:
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if best:
            trainer.test(learner, datamodule=dm, ckpt_path=best, weights_only=True)
        else:
            trainer.test(learner, datamodule=dm)
        results.update(final_metrics(trainer, "test/"))
        results["ckpt"] = str(Path(best).resolve()) if best else None
        results["test_episodes_fingerprint"] = dm.fingerprint("test")
    log_hparams(trainer, cfg, results)
    return write_results(out, results)


def merged_config(cfg: DictConfig, stored: dict) -> DictConfig:
    """A stored run config with this command's overrides applied on top."""
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
    if cfg.ckpt_path is None:
        raise ValueError("--config-name eval needs the checkpoint to test: add ckpt_path=PATH (a .ckpt file, e.g. "
                         "outputs/train/runs/<run>/checkpoints/best.ckpt)")
    ckpt_path = Path(hydra.utils.to_absolute_path(str(cfg.ckpt_path)))
    ckpt = load_checkpoint(ckpt_path)
    run_cfg = merged_config(cfg, ckpt["metaft_config"])
    seed_everything(run_cfg.seed)
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
    return write_results(out, results, ckpt=str(ckpt_path), test_episodes_fingerprint=dm.fingerprint("test"))


def main(cfg: DictConfig) -> float | None:
    if cfg.task_name == "finetune":
        from metaft.finetune.run import finetune  # stage 2 (conf/finetune.yaml)

        results = finetune(cfg)
    else:
        results = evaluate(cfg) if cfg.task_name == "eval" else train(cfg)
    if cfg.get("optimized_metric"):
        if cfg.optimized_metric not in results:
            known = ", ".join(k for k in sorted(results) if k.startswith(("val/", "test/")) and "_step" not in k)
            raise ValueError(f"optimized_metric={cfg.optimized_metric} is not a metric of this run; use one of: {known}")
        return results[cfg.optimized_metric]
    return None
