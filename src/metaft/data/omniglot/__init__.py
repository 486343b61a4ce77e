"""Omniglot: storage (zips, cache, download), image operations, episodes, Lake's one-shot runs."""
from metaft.data.omniglot.episodes import OmniglotDataModule
from metaft.data.omniglot.runs import OmniglotRunsDataModule
from metaft.data.omniglot.store import DRAWERS, default_cache_dir

__all__ = ["DRAWERS", "OmniglotDataModule", "OmniglotRunsDataModule", "default_cache_dir"]
