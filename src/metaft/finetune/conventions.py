"""A fine-tuning target's input conventions (channels, image size, mean and std) taken from the
checkpoint's meta-training data, so a folder of RGB images fine-tunes an RGB checkpoint on inputs
prepared as it was trained on. A setting given on the command line wins, with a warning naming
the difference."""
from __future__ import annotations

import logging
from typing import Any, Iterable

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

KEYS = ("channels", "image_size", "mean", "std")


def meta_conventions(ckpt_cfg: dict[str, Any]) -> dict[str, Any]:
    """The conventions of a checkpoint's meta-training inputs, from its stored config: the dataset's
    own settings, else its model's (Conv4's ``in_channels`` / ``image_size``). Empty for data that
    are not images (sinusoid). Image datasets without ``mean`` (Omniglot) fed raw [0, 1] pixels."""
    dataset, model = ckpt_cfg.get("dataset") or {}, ckpt_cfg.get("model") or {}
    out: dict[str, Any] = {}
    channels = dataset.get("channels", model.get("in_channels"))
    if channels is None:  # a dataset whose images have one fixed format declares it (Omniglot: grey)
        channels = getattr(_dataset_class(dataset), "channels", None)
    if channels is not None:
        out["channels"] = int(channels)
    size = dataset.get("image_size", model.get("image_size"))
    if size is not None:
        out["image_size"] = int(size)
    if out:  # image inputs: normalised as the dataset said (no mean: raw [0, 1] pixels)
        for key in ("mean", "std"):
            value = dataset.get(key)
            out[key] = None if value is None else [float(v) for v in value]
    return out


def _dataset_class(dataset: dict[str, Any]) -> type | None:
    """The datamodule class a stored dataset config names, or None (none named, or gone)."""
    try:
        return get_class(str(dataset["_target_"])) if dataset.get("_target_") else None
    except Exception:  # hydra wraps the import error of a class this version does not have
        return None


def apply_conventions(target: DictConfig, conventions: dict[str, Any], given: Iterable[str]) -> dict[str, Any]:
    """Set each convention ``target`` has a setting for to the checkpoint's, unless the command line
    gave it (``given``: keys of ``target``); warn for each given value that differs. Returns the
    values taken from the checkpoint."""
    given = set(given)
    taken: dict[str, Any] = {}
    for key in KEYS:
        if key not in target or key not in conventions:
            continue
        theirs = conventions[key]
        if key in given:
            mine = OmegaConf.to_container(target[key]) if OmegaConf.is_config(target[key]) else target[key]
            if _differs(mine, theirs):
                log.warning(f"target.{key}={mine} differs from the checkpoint's meta-training data ({key}={theirs}): "
                            f"the model is fine-tuned on inputs unlike those it learned from (drop target.{key} "
                            "to use the checkpoint's)")
            continue
        OmegaConf.update(target, key, theirs, merge=False)
        taken[key] = theirs
    if taken:
        log.info("target inputs as the checkpoint's meta-training data: "
                 + ", ".join(f"target.{k}={v}" for k, v in taken.items()))
    return taken


def _differs(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) != len(b) or any(abs(float(x) - float(y)) > 1e-9 for x, y in zip(a, b))
    return a != b
