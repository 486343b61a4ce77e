"""Configs composed by Hydra outside a run: one option of a config group with the parts its defaults
list names (an algorithm's config over ``algorithm/_base/*``), and a config of another directory
with the configs its defaults list merges (the study's presets over the study they change).

Hydra's own config loader does the composition (defaults lists, ``_self_``, ``@package``), so
these configs follow the same rules as those of ``train.py``; nothing here merges by hand.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple, Sequence

from omegaconf import DictConfig, OmegaConf, open_dict


def _loader(primary: Path | str) -> Any:
    """Hydra's config loader over ``primary`` (a directory, or ``pkg://...``) and Hydra's own configs."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path

    primary = str(primary.resolve()) if isinstance(primary, Path) else primary
    return ConfigLoaderImpl(config_search_path=create_config_search_path(primary))


def compose(primary: Path | str, config_name: str | None, overrides: Sequence[str] = ()) -> DictConfig:
    """``config_name`` of ``primary`` composed by Hydra with ``overrides``, without Hydra's node and
    unresolved, as a plain config (not read-only, not struct: as ``OmegaConf.load`` gives it)."""
    from hydra.types import RunMode

    cfg = _loader(primary).load_configuration(config_name=config_name, overrides=list(overrides),
                                              run_mode=RunMode.RUN)
    with open_dict(cfg):
        del cfg["hydra"]
    return OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))


def group_option(primary: Path | str, group: str, option: str) -> DictConfig:
    """One option of a config group as Hydra composes it (its defaults list merged under it), read
    at the group's package (``algorithm`` for ``algorithm=maml``)."""
    node = OmegaConf.select(compose(primary, None, [f"+{group}={option}"]), group.replace("/", "."))
    if not isinstance(node, DictConfig):
        raise ValueError(f"{group}={option} does not compose to a config at {group}")
    return node


class Part(NamedTuple):
    """A config of a composition: its path (``omniglot`` for ``omniglot.yaml``), the package it
    merges at (``""``: the top), and its own file's settings (without its defaults list)."""
    path: str
    package: str
    config: DictConfig


def parts(primary: Path | str, config_name: str) -> list[Part]:
    """The configs Hydra merges to compose ``config_name``, in its merge order (the last one wins),
    Hydra's own configs left out."""
    from hydra.types import RunMode

    loader = _loader(primary)
    found = []
    for d in loader.compute_defaults_list(config_name, [], RunMode.RUN).defaults:
        if d.config_path is None or d.config_path.startswith("hydra/"):
            continue
        loaded = loader.repository.load_config(d.config_path)
        if loaded is None or not isinstance(loaded.config, DictConfig):
            continue
        own = OmegaConf.create(OmegaConf.to_container(loaded.config, resolve=False))
        own.pop("defaults", None)
        found.append(Part(d.config_path, d.package or "", own))
    return found
