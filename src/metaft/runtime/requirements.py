"""Optional packages a config choice needs (a logger's ``_requires_``: ``logger=wandb`` needs
wandb), named with the pip command before anything runs. Imports no torch."""
from __future__ import annotations

import importlib.util
from typing import Any

from omegaconf import DictConfig

REQUIRES = "_requires_"  # the key naming an entry's pip package (the runtime drops it before building)


def missing_package(group: str, name: str, node: Any) -> str | None:
    """Why ``group``'s entry ``name`` cannot be built here: its ``_requires_`` package is not installed."""
    need = node.get(REQUIRES) if isinstance(node, DictConfig) else None
    if need is None or importlib.util.find_spec(str(need).replace("-", "_")) is not None:
        return None
    if group == "logger":
        return (f"logger={name} needs the Python package {need}, which is not installed here: pip install {need} "
                f"(or choose another logger, e.g. logger=tensorboard or logger=csv)")
    return f"{group}.{name} needs the Python package {need}, which is not installed here: pip install {need}"
