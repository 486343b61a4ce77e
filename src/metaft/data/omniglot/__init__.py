"""Omniglot: storage (zips, cache, download), image operations, episodes, Lake's one-shot runs."""
from typing import Any

from metaft.data.omniglot.episodes import OmniglotDataModule
from metaft.data.omniglot.store import DRAWERS, default_cache_dir

__all__ = ["DRAWERS", "OmniglotDataModule", "OmniglotRunsDataModule", "default_cache_dir"]


def __getattr__(name: str) -> Any:
    # Imported on first use, not with the package: `python -m metaft.data.omniglot.runs build` would
    # otherwise find its own module already imported and warn (runpy's RuntimeWarning).
    if name == "OmniglotRunsDataModule":
        from metaft.data.omniglot.runs import OmniglotRunsDataModule

        return OmniglotRunsDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
