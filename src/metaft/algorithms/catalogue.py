"""The algorithms a user can choose (``conf/algorithm/*.yaml``), sorted by what their classes
declare: error messages list them from here instead of naming them by hand."""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Mapping

from hydra.utils import get_class
from omegaconf import DictConfig

from metaft.runtime.compose import group_option
from metaft.runtime.paths import conf_dir


def algorithm_config(name: str) -> DictConfig:
    """``algorithm=<name>`` as Hydra composes it for a run: ``conf/algorithm/<name>.yaml`` over the
    configs its defaults list names (``_base/inner_loop`` over ``_base/common``)."""
    return group_option(conf_dir(), "algorithm", name)


@lru_cache(maxsize=1)
def _catalogue() -> tuple[tuple[str, type, DictConfig], ...]:
    names = sorted(p.stem for p in (conf_dir() / "algorithm").glob("*.yaml"))
    return tuple((n, get_class(c._target_), c) for n in names for c in [algorithm_config(n)])


def names(predicate: "callable[[type, DictConfig], bool]") -> list[str]:  # type: ignore[valid-type]
    """The ``algorithm=`` choices whose (class, config) satisfy ``predicate``; empty if the
    project's configs cannot be found (an installed package used on its own)."""
    try:
        return [n for n, cls, cfg in _catalogue() if predicate(cls, cfg)]
    except FileNotFoundError:
        return []


def listed(predicate: "callable[[type, DictConfig], bool]") -> str:  # type: ignore[valid-type]
    return ", ".join(names(predicate)) or "see conf/algorithm/"


def learner_class(config: Mapping[str, Any], what: str = "the checkpoint") -> type:
    """The learner class a run config's ``algorithm._target_`` names, to ask what it declares
    (``MetaLearner``'s class attributes); a clear error when it names none this metaft has."""
    target = str((config.get("algorithm") or {}).get("_target_", ""))
    try:
        return get_class(target)
    except Exception as e:  # hydra wraps the ImportError/AttributeError of a missing class
        raise ValueError(f"{what} was trained by algorithm {target or '(none stored)'}, which this metaft does not "
                         f"have ({e}); use the metaft version that trained it") from e


def fixed_body(cls: type, cfg: DictConfig) -> bool:
    """Learners whose body stays fixed while a task is solved."""
    return cls.head_per_episode or (cls.has_inner_loop and cfg.get("adapt") == "head")


def per_episode_head(cls: type, cfg: DictConfig) -> bool:
    return cls.head_per_episode


def zero_head_capable(cls: type, cfg: DictConfig) -> bool:
    """Inner-loop learners that can start each task from a zero head sized by the episode."""
    return cls.has_inner_loop and cfg.get("adapt") != "body" and not cls.learns_step_sizes


def regresses(cls: type, cfg: DictConfig) -> bool:
    return cls.regresses


def pretrains(cls: type, cfg: DictConfig) -> bool:
    """Supervised pre-training over the training classes (fine-tuning's ``init=pretrained``)."""
    return cls.classifies_training_classes
