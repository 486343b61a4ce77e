"""The study's configs, ``conf/study/<name>.yaml``, composed by Hydra. A preset is a study config
whose defaults list names the study it changes and which writes only what it changes::

    defaults:
      - omniglot
      - _self_
    name: omniglot_cpu
    target: {ways: [5]}

Hydra merges settings key by key. The named sets (``inits``, ``variants``) are not settings but
lists of what the study trains: a config that writes one gives it whole, so a preset's inits
replace its base's instead of being added to them.
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from metaft.runtime.compose import compose, parts
from metaft.runtime.paths import conf_dir

# Top-level keys that the last config of the defaults list writing them gives whole.
NAMED_SETS = ("inits", "variants")


def study_dir() -> Path:
    """The study configs' directory (the package's configs: a checkout's ``conf/study``)."""
    return conf_dir() / "study"


def names(directory: Path | None = None) -> list[str]:
    return sorted(p.stem for p in (directory or study_dir()).glob("*.yaml"))


def load(name: str, directory: Path | None = None) -> DictConfig:
    """Study ``name`` as Hydra composes it from ``directory`` (default: the package's), its named
    sets each from the last config that writes it. A ``ValueError`` for an unknown name or a
    config Hydra cannot compose (a defaults list naming a missing study, or a cycle)."""
    directory = directory or study_dir()
    if name not in names(directory):
        raise ValueError(f"no study named {name!r}: conf/study/{name}.yaml does not exist "
                         f"(studies: {', '.join(names(directory))})")
    try:
        cfg, merged = compose(directory, name), parts(directory, name)
    except RecursionError as e:  # Hydra follows a cycle of defaults lists until the stack runs out
        raise ValueError(f"conf/study/{name}.yaml: its defaults list comes back to it (directly or through "
                         "another study's); a preset names the study it changes, which names neither") from e
    except Exception as e:  # Hydra's composition errors (MissingConfigException, ConfigCompositionException)
        raise ValueError(f"conf/study/{name}.yaml: {e}") from e
    if "base" in cfg:  # the hand-merged key the presets had before Hydra composed them
        raise ValueError(f"conf/study/{name}.yaml: 'base: {cfg.base}' is no longer read; name the study it changes "
                         f"in a defaults list (defaults: [{cfg.base}, _self_])")
    for key in NAMED_SETS:
        written = [p.config[key] for p in merged if not p.package and key in p.config]
        if written:
            last = written[-1]
            OmegaConf.update(cfg, key, OmegaConf.to_container(last) if OmegaConf.is_config(last) else last, merge=False)
    return cfg
