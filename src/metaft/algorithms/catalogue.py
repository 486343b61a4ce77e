"""The algorithms a user can choose (``conf/algorithm/*.yaml``), sorted by what their classes
declare: error messages list them from here instead of naming them by hand."""
from __future__ import annotations

from functools import lru_cache

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from metaft.runtime.paths import project_root


def algorithm_config(name: str) -> DictConfig:
    """``conf/algorithm/<name>.yaml`` merged over the algorithm configs its defaults list names."""
    node = OmegaConf.load(project_root() / "conf" / "algorithm" / f"{name}.yaml")
    parents = [d for d in node.pop("defaults", []) if isinstance(d, str) and d != "_self_"]
    return OmegaConf.merge(*(algorithm_config(p) for p in parents), node) if parents else node


@lru_cache(maxsize=1)
def _catalogue() -> tuple[tuple[str, type, DictConfig], ...]:
    names = sorted(p.stem for p in (project_root() / "conf" / "algorithm").glob("*.yaml"))
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


def fixed_body(cls: type, cfg: DictConfig) -> bool:
    """Learners whose body stays fixed while a task is solved."""
    from metaft.algorithms.feature_head import FeatureHeadLearner

    return issubclass(cls, FeatureHeadLearner) or cfg.get("adapt") == "head"


def per_episode_head(cls: type, cfg: DictConfig) -> bool:
    from metaft.algorithms.feature_head import FeatureHeadLearner

    return issubclass(cls, FeatureHeadLearner)


def zero_head_capable(cls: type, cfg: DictConfig) -> bool:
    """Gradient learners that can start each task from a zero head sized by the episode."""
    from metaft.algorithms.gradient import GradientLearner

    return issubclass(cls, GradientLearner) and cfg.get("adapt") != "body" and not cls.learns_step_sizes


def regresses(cls: type, cfg: DictConfig) -> bool:
    from metaft.algorithms.gradient import GradientLearner

    return issubclass(cls, GradientLearner)
