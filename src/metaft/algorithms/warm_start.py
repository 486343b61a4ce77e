"""Starting a learner from another run's body (``algorithm.init_ckpt``): Meta-Baseline's
meta-stage begins from a pre-trained body (a ``pretrain`` or ``baselinepp`` checkpoint)."""
from __future__ import annotations

from typing import Any, TypeVar

from hydra.utils import to_absolute_path
from omegaconf import DictConfig, open_dict

from metaft.models.loading import load_body
from metaft.models.nets import MetaNet
from metaft import checkpoint

Config = TypeVar("Config", DictConfig, dict[str, Any])


def describe(net: MetaNet) -> str:
    """This run's architecture in one line (the learner sees the module, not its config)."""
    n = sum(t.numel() for t in net.body.state_dict().values())
    return f"{type(net).__module__}.{type(net).__name__} (body: {n} numbers, feature_dim={net.feature_dim})"


def load_init_body(net: MetaNet, path: str, setting: str = "algorithm.init_ckpt") -> None:
    """Copy the body (weights and batch-norm buffers) of the stage-1 checkpoint at ``path`` into
    ``net.body``; raise, naming both architectures and the differing shapes, if they do not match."""
    ckpt = checkpoint.load(to_absolute_path(str(path)), what=setting)
    ckpt_model = checkpoint.config(ckpt).get("model")
    fix = (f"Give this run the checkpoint's model settings (model=<group> and model.<key>=... as in its "
           f"model config above), or set {setting} to a checkpoint of this run's architecture (null: train from scratch).")
    load_body(net, ckpt["state_dict"], f"{setting}={path}", ckpt_model, describe(net), user="model of this run", fix=fix)


def without_init_ckpt(cfg: Config) -> Config:
    """A run config (``DictConfig`` or plain dict) with ``algorithm.init_ckpt`` unset, for rebuilding
    a learner whose checkpoint is loaded next (evaluation, the study): the training run's starting
    point is overwritten, so its file need not exist any more. ``cfg`` itself is left as it was."""
    if not (cfg.get("algorithm") or {}).get("init_ckpt"):
        return cfg
    if not isinstance(cfg, DictConfig):
        return {**cfg, "algorithm": {**cfg["algorithm"], "init_ckpt": None}}
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.algorithm.init_ckpt = None
    return cfg
