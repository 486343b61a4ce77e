"""The runtime both stages share: the run directory, resume, seeding, the Trainer, results."""
from __future__ import annotations

import inspect
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import Callback, EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from metaft.runtime.checkpoints import AtomicLastCheckpoint
from metaft import checkpoint
from metaft.runtime.io import write_json
from metaft.runtime.progress import ProgressLog, progress_mode
from metaft.runtime.requirements import REQUIRES, missing_package

log = logging.getLogger(__name__)

# Config groups: an override of one (e.g. dataset=omniglot_runs) replaces the stored node whole.
GROUPS = ("algorithm", "dataset", "model", "target")


class ValidateAtEnd(Callback):
    """Validate after the last step of every run, so a run shorter than ``val_check_interval``
    still picks ``best.ckpt`` and reports ``val/*``; warn when no validation falls inside the run.
    How: Lightning validates after a step that sets ``should_stop`` (as early stopping does)."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        every, left = trainer.val_check_batch, trainer.max_steps - trainer.global_step
        if trainer.max_steps > 0 and isinstance(every, (int, float)) and every > left > 0 and trainer.is_global_zero:
            log.warning(f"trainer.val_check_interval={every} is more than the {left} steps this run trains: it validates "
                        f"once, at the end (lower trainer.val_check_interval for validations along the way)")

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        every = trainer.val_check_batch
        # A last step on the validation schedule is validated by it already (not twice).
        scheduled = isinstance(every, int) and every > 0 and trainer.global_step % every == 0
        if 0 < trainer.max_steps <= trainer.global_step and not scheduled:
            trainer.should_stop = True


# Configured callbacks that come after the stage's own (the others come before them).
AFTER_THE_STAGE = (ModelCheckpoint, AtomicLastCheckpoint, ValidateAtEnd, EarlyStopping, ProgressLog)


def run_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir)


def make_trainer(cfg: DictConfig, out: Path, monitor: str | None = None, mode: str = "min",
                 callbacks: Sequence[Callback] = ()) -> L.Trainer:
    """The Trainer of a stage: the loggers of ``cfg.logger`` and the callbacks of ``cfg.callbacks``
    (``conf/logger/``, ``conf/callbacks/``), then the stage's own ``callbacks``. ``monitor`` is the
    validation metric a training stage watches (None: a stage that only scores, as eval)."""
    bar = progress_mode(cfg.get("progress", "auto")) == "bar"
    loggers = make_loggers(cfg, out)
    configured = make_callbacks(cfg, out, monitor, mode)
    if not loggers:  # Lightning's LearningRateMonitor refuses a Trainer without a logger
        configured = [c for c in configured if not isinstance(c, LearningRateMonitor)]
    # The stage's own callbacks (its monitor, episode scores, figures) run after the monitoring ones
    # and before the checkpoints, as they did when the runtime listed all of them in code.
    first = [c for c in configured if not isinstance(c, AFTER_THE_STAGE)]
    last = [c for c in configured if isinstance(c, AFTER_THE_STAGE)]
    trainer_kwargs = hydra.utils.instantiate(cfg.trainer, _convert_="all")  # builds a configured strategy
    devices = trainer_kwargs.get("devices")
    if trainer_kwargs.get("accelerator") in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ValueError(f"trainer.accelerator={trainer_kwargs['accelerator']} (hardware=gpu or ddp) needs a CUDA GPU, "
                         "and torch finds none here: use hardware=cpu (or hardware=ddp_cpu for two CPU processes)")
    if trainer_kwargs.get("accelerator") == "cpu" and isinstance(devices, int) and devices > (os.cpu_count() or 1):
        raise ValueError(f"trainer.devices={devices} CPU processes is more than this machine's {os.cpu_count()} cores; lower trainer.devices")
    if trainer_kwargs.get("enable_progress_bar") is None:
        trainer_kwargs["enable_progress_bar"] = bar
    # Without a configured checkpoint (callbacks=none) Lightning would add its own, named by epoch.
    trainer_kwargs.setdefault("enable_checkpointing", any(isinstance(c, ModelCheckpoint) for c in configured))
    # logger=False: no logger at all (an empty list would too, but False says so to Lightning).
    return L.Trainer(**trainer_kwargs, default_root_dir=str(out), logger=loggers or False,
                     callbacks=[*first, *callbacks, *last])


def _entries(cfg: DictConfig, group: str, out: Path) -> list[tuple[str, DictConfig]]:
    """The (name, node) pairs of ``cfg[group]`` that are set, resolved with ``paths.output_dir`` at
    ``out`` (a resumed run writes into the run it continues, not into Hydra's new directory)."""
    node = cfg.get(group)
    if not node:
        return []
    run = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    OmegaConf.update(run, "paths.output_dir", str(out), force_add=True)
    return [(name, run[group][name]) for name in node if run[group][name] is not None]


def _build(group: str, name: str, node: DictConfig, **given: Any) -> Any:
    """``node`` instantiated, with the runtime's values for the parameters it takes among ``given``."""
    problem = missing_package(group, name, node)
    if problem:
        raise ValueError(problem)
    node = OmegaConf.create({k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k != REQUIRES})
    made = hydra.utils.instantiate(node, _partial_=True)
    params = inspect.signature(made.func).parameters
    return made(**{k: v for k, v in given.items() if k in params and k not in made.keywords})


def make_loggers(cfg: DictConfig, out: Path) -> list[Logger]:
    """The loggers ``cfg.logger`` names (``logger=csv``, ``logger=[tensorboard,csv]``), writing into ``out``."""
    return [_build("logger", name, node, save_dir=str(out)) for name, node in _entries(cfg, "logger", out)]


def make_callbacks(cfg: DictConfig, out: Path, monitor: str | None, mode: str) -> list[Callback]:
    """The callbacks ``cfg.callbacks`` lists. An entry that takes ``monitor`` or ``dirpath`` (the
    checkpoints, early stopping) is given the stage's validation metric and ``out/checkpoints``,
    and is left out of a stage that does not train (no ``monitor``); one that builds to None (the
    progress lines under the bar, early stopping with patience 0) is left out."""
    made = []
    for name, node in _entries(cfg, "callbacks", out):
        target = hydra.utils.get_method(node._target_) if "_target_" in node else None
        params = inspect.signature(target).parameters if target is not None else {}
        if monitor is None and ("monitor" in params or "dirpath" in params):
            continue
        callback = _build("callbacks", name, node, monitor=monitor, mode=mode, dirpath=str(out / "checkpoints"))
        if callback is not None:
            made.append(callback)
    return made


def final_metrics(trainer: L.Trainer, prefix: str) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(prefix)}


def run_overrides(out: Path) -> list[str]:
    """The command-line overrides that define the run in ``out``. A run continued from another
    command (``ckpt_path``, Hydra's new directory elsewhere) is the run it continues: that run's
    own overrides, with this command's on top, without ``ckpt_path``."""
    now = [str(o) for o in HydraConfig.get().overrides.task] if HydraConfig.initialized() else []
    saved = out / ".hydra" / "overrides.yaml"
    if not HydraConfig.initialized() or out.resolve() == run_dir().resolve() or not saved.is_file():
        return now

    def key(o: str) -> str:
        return o.split("=", 1)[0].lstrip("+~")

    added = {key(o): o for o in now if key(o) != "ckpt_path"}
    first = [str(o) for o in OmegaConf.load(saved)]
    return [added.pop(key(o), o) for o in first] + list(added.values())


def write_results(out: Path, metrics: dict[str, float], **extra: Any) -> dict[str, Any]:
    results = {**metrics, **extra, "overrides": run_overrides(out)}
    if rank_zero_only.rank != 0:  # under SLURM or torchrun every rank runs the stage; one writes
        return results
    write_json(out / "results.json", results)
    log.info(f"results: {out / 'results.json'}")
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
    return path, run


# Settings of how a run is recorded, not of what it learns (conf/logger/, conf/callbacks/).
RECORDING = ("logger", "callbacks")

# What makes a run another run: its data, its network, its learner.
IDENTITY = ("dataset._target_", "model._target_", "algorithm._target_", "algorithm.first_order")


def refuse_other_run(cfg: DictConfig, stored: dict, run: Path) -> None:
    """``ckpt_path=last`` picked the newest run beside this one: refuse when that run's dataset,
    model or algorithm differ from this command's, which would silently continue another
    experiment (e.g. an Omniglot run, resumed by a command typed with the sinusoid defaults)."""
    old = OmegaConf.create(stored)
    differ = [(k, OmegaConf.select(old, k), OmegaConf.select(cfg, k)) for k in IDENTITY
              if OmegaConf.select(old, k) != OmegaConf.select(cfg, k)]
    if differ:
        what = "; ".join(f"{k}: {a} there, {b} in this command" for k, a, b in differ)
        raise ValueError(
            f"ckpt_path=last would resume {run}, a different run from this command's ({what}). To continue that run, "
            f"name it: ckpt_path={run}; to start a new run, drop ckpt_path"
        )


def checkpoint_file(path: Path, what: str = "ckpt_path", use: str = "testing") -> Path:
    """``path`` itself, or for a run directory its ``checkpoints/best.ckpt`` (else ``last.ckpt``);
    ``use`` says in the log what is done with it (``testing``, ``fine-tuning from``)."""
    if not path.is_dir():
        return path
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    for name in ("best.ckpt", "last.ckpt"):
        if (folder / name).is_file():
            log.info(f"{what}={path}: {use} {folder / name}")
            return folder / name
    raise FileNotFoundError(f"{what}={path} is a directory without checkpoints/best.ckpt or last.ckpt; give a run "
                            "directory that has them, or a .ckpt file")


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
        ckpt = checkpoint.load(resume)  # the whole checkpoint is read once
        saved, done = checkpoint.config(ckpt), int(ckpt.get("global_step", 0))
        if str(cfg.ckpt_path) == "last" and out != run_dir():
            refuse_other_run(cfg, saved, out)
        if out != run_dir():  # Hydra's new directory for this command only points at the continued run
            (run_dir() / "RESUMED_INTO.txt").write_text(f"{out}\n")
            log_also_into(out)
        # Lightning restores the optimizer's and scheduler's state, learning rate included, so a
        # changed setting would not apply, though the saved config would claim it.
        stored = OmegaConf.create(saved)
        state_keys = ("algorithm.optimizer", "algorithm.scheduler", "finetuner.optimizer", "finetuner.scheduler")
        for override in HydraConfig.get().overrides.task:
            key = override.split("=", 1)[0].lstrip("+~")
            # What the run learns from is part of the run: continuing it on other data, another model
            # or another algorithm would leave a run whose saved config describes neither half.
            # (An algorithm's own settings may change: e.g. nonfinite=skip to get past a bad step.)
            defines_run = key in GROUPS or key.startswith(("dataset.", "model."))
            if defines_run and key.split(".")[0] in stored and OmegaConf.select(cfg, key) != OmegaConf.select(stored, key):
                raise ValueError(
                    f"{override}: resuming continues the run as it was trained ({key}="
                    f"{_brief(OmegaConf.select(stored, key))}); drop it to continue the run, or start a new run "
                    "(without ckpt_path) to train with it"
                )
            if key.startswith(state_keys) and OmegaConf.select(cfg, key) != OmegaConf.select(stored, key):
                raise ValueError(
                    f"{override}: resuming restores the optimizer and scheduler from the checkpoint "
                    f"({key}={OmegaConf.select(stored, key)}), so this setting would not take effect; drop it to "
                    "continue the run, or start a new run"
                )
        cfg = merged_config(cfg, OmegaConf.to_container(stored))
        steps = int(OmegaConf.select(cfg, "trainer.max_steps", default=-1) or -1)
        if 0 < steps <= done and (out / "results.json").is_file():
            # Nothing would train, yet results.json would be rewritten under this command's settings.
            raise ValueError(f"ckpt_path={cfg.ckpt_path}: the run in {out} has finished {done} steps, and "
                             f"trainer.max_steps={steps}; raise trainer.max_steps to train it further, or test it "
                             f"again with --config-name eval ckpt_path={out}")
        log.info("resuming %s in %s", resume, out)
    seed_everything(cfg.seed)
    return cfg, resume, out


def log_also_into(folder: Path) -> None:
    """Append this command's log to the continued run's own log file too (Hydra writes it into the
    new directory only), so the run's log holds both halves."""
    root = logging.getLogger()
    mine = [h for h in root.handlers if isinstance(h, logging.FileHandler)
            and Path(h.baseFilename).parent == run_dir().resolve()]
    for h in mine:
        twin = logging.FileHandler(folder / Path(h.baseFilename).name, mode="a")
        twin.setFormatter(h.formatter)
        twin.setLevel(h.level)
        root.addHandler(twin)


def _brief(value: Any) -> Any:
    """A group's stored config by its target (``metaft.algorithms.MAML``), a setting as it is."""
    return value.get("_target_", value) if isinstance(value, DictConfig) else value


def merged_config(cfg: DictConfig, stored: dict) -> DictConfig:
    """A stored run config with this command's overrides applied on top."""
    merged = OmegaConf.create(stored)
    for override in HydraConfig.get().overrides.task:
        key = override.split("=", 1)[0].lstrip("+~")
        if key in ("ckpt_path",) or key.startswith("hydra."):
            continue
        if key in GROUPS or key in RECORDING:  # a group choice, e.g. dataset=omniglot_runs: take the whole node
            merged[key] = cfg.get(key)
        else:
            OmegaConf.update(merged, key, OmegaConf.select(cfg, key), force_add=True)
    # How a run is recorded (RECORDING): a resumed run keeps its own; another stage's run (eval of a
    # training checkpoint) and a checkpoint from before these settings existed take this command's.
    for key in RECORDING:
        if key in cfg and (key not in merged or merged.get("task_name") != cfg.task_name):
            merged[key] = cfg[key]
    merged.task_name = cfg.task_name
    return merged
