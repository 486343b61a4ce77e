"""Checks of a stage's episodes that concern the data rather than the learner: every shape problem
before the run starts, the evaluation stage's ``seed``, and a label for intervals computed on a
small pool of images."""
from __future__ import annotations

import logging
from typing import Any, Sequence

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

log = logging.getLogger(__name__)

# A pool of fewer distinct images than this many episodes' worth makes the episodes reuse the same
# images over and over: their interval then speaks for these images only.
SMALL_POOL_EPISODES = 10


def check_shapes(dm: Any, splits: Sequence[str]) -> None:
    """Raise one ValueError listing every shape problem of ``splits`` (a line each), before the run
    starts; datamodules without ``shape_problems`` have nothing to check."""
    problems = dm.shape_problems(splits) if hasattr(dm, "shape_problems") else []
    if problems:
        # One message, one problem a line, each read as its own error (train.py prints "error: " first).
        raise ValueError("\nerror: ".join(problems))


def _overridden(key: str) -> bool:
    overrides = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    return any(o.split("=", 1)[0].lstrip("+~") == key for o in overrides)


def follow_seed(run_cfg: DictConfig) -> None:
    """``--config-name eval ... seed=S`` draws the evaluation episodes with seed S: the checkpoint's
    stored config holds its own resolved ``dataset.seed``, which would otherwise win, so that the
    log said "Seed set to S" while scoring the training run's episodes. ``dataset.seed`` given
    too, or a dataset group chosen (its ``seed: ${seed}`` follows by itself), is left alone."""
    if not _overridden("seed") or _overridden("dataset.seed") or _overridden("dataset"):
        return
    if "dataset" in run_cfg and "seed" in run_cfg.dataset and run_cfg.dataset.seed != run_cfg.seed:
        log.info(f"seed={run_cfg.seed}: the evaluation episodes are drawn with dataset.seed={run_cfg.seed} (the "
                 f"checkpoint's run used {run_cfg.dataset.seed})")
        run_cfg.dataset.seed = run_cfg.seed


def small_pool(dm: Any, split: str, metric: str) -> dict[str, Any] | None:
    """For ``results.json``: a note when ``split``'s fixed episodes draw from fewer distinct images
    than ``SMALL_POOL_EPISODES`` episodes hold (so they reuse them), logged as a warning; their
    ``{split}/{metric}_ci95`` is then an interval for new episodes of these images, conditional on
    them, not for new images of these classes. None otherwise (or without a count of images)."""
    images = dm.pool_images(split) if hasattr(dm, "pool_images") else None
    per_episode = dm.images_per_episode(split) if hasattr(dm, "images_per_episode") else None
    if images is None or per_episode is None or images >= SMALL_POOL_EPISODES * per_episode:
        return None
    episodes = int(dm.val_episodes if split == "val" else dm.test_episodes)
    note = (f"conditional on these {images} images: the {episodes} {split} episodes reuse them (fewer distinct images "
            f"than {SMALL_POOL_EPISODES} episodes of {per_episode} hold); it does not cover new images of these classes")
    log.warning(f"small pool: {split}/{metric}_ci95 is {note}")
    return {"split": split, "images": int(images), "images_per_episode": int(per_episode), "episodes": episodes,
            "rule": f"fewer than {SMALL_POOL_EPISODES} x images_per_episode distinct images",
            f"{split}/{metric}_ci95": note}
