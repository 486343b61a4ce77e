"""A study's data given as a dataset config: ``dataset: {config: <name>, <setting>: <value>, ...}``
is ``conf/dataset/<name>.yaml`` (as ``train.py dataset=<name>`` composes it) with the settings that
are not null, so any dataset config (``image_folder`` included) serves as the study's target
problems; its stage-1 runs get the same ``dataset=<name>`` and settings, so they train on the
training classes of the same data. A ``dataset`` block with a ``_target_`` is used as written.

Settings a preset leaves for its user (``???``) are refused before anything runs, naming them."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

KEY = "config"  # the dataset block's key naming conf/dataset/<name>.yaml


def check_given(cfg: DictConfig, within: DictConfig | None = None, prefix: str = "") -> None:
    """Refuse a study whose preset (or ``within``, its composed dataset config, whose keys get
    ``prefix``) leaves settings to be given (``???``), naming each."""
    missing: list[str] = []

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}{k}.", v)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(f"{prefix}{i}.", v)
        elif node == "???":
            missing.append(prefix.rstrip("."))

    walk(prefix, OmegaConf.to_container(cfg if within is None else within, resolve=False))  # unresolved: a setting interpolating a missing one is fine
    if missing:
        example = " ".join(f"{k}={'PATH' if k.endswith(('dir', 'root')) else 'VALUE'}" for k in missing)
        raise ValueError(f"the {cfg.get('name', 'study')} study needs {', '.join(missing)}: give "
                         f"{'it' if len(missing) == 1 else 'them'} on the command line "
                         f"(python -m metaft.study {cfg.get('name', '<study>')} {example})")


def hydra_value(value: Any) -> str:
    """``value`` written in Hydra's override grammar (strings quoted, so any path or class name)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def overrides(block: DictConfig) -> list[str]:
    """``train.py`` overrides of a ``{config: <name>, ...}`` block: the config, then each setting
    that is not null (null: the dataset config's own)."""
    given = OmegaConf.to_container(block, resolve=True)
    name = given.pop(KEY)
    return [f"dataset={name}", *(f"dataset.{k}={hydra_value(v)}" for k, v in given.items() if v is not None)]


def resolve(cfg: DictConfig) -> DictConfig:
    """``cfg`` with a ``{config: <name>, ...}`` dataset block composed into the data module it names
    (resolved, so the saved study holds what it read) and its overrides added to every stage-1 run;
    checked before anything runs (settings still to give, the class lists, the data folder)."""
    check_given(cfg)
    block = cfg.get("dataset")
    if block is None or KEY not in block:
        return cfg
    from metaft.data.identity import dataset_classes
    from metaft.study.budgets import compose_train

    extra = overrides(block)
    try:
        composed = compose_train(extra)
    except Exception as e:  # Hydra's message names the setting it could not take
        raise ValueError(f"dataset.{KEY}={block[KEY]}: {e}") from e
    check_given(cfg, composed.dataset, "dataset.")  # e.g. image_folder's data_dir, which a preset cannot require
    dataset = OmegaConf.to_container(composed.dataset, resolve=True)
    data_dir = dataset.get("data_dir")
    if data_dir is not None and not dataset.get("download") and not Path(str(data_dir)).expanduser().is_dir():
        raise FileNotFoundError(f"dataset.data_dir={data_dir} is not a directory: point the {cfg.name} study at the "
                                f"{block[KEY]} data (python -m metaft.study {cfg.name} dataset.data_dir=PATH)")
    cfg = OmegaConf.create(OmegaConf.to_container(cfg))
    with open_dict(cfg):
        cfg.dataset = dataset
        cfg.stage1.overrides = [*extra, *cfg.stage1.overrides]
    dataset_classes(cfg.dataset)  # the class lists read (and checked disjoint) now, not in a stage-1 run
    return cfg
