from typing import Any

from metaft.data.episodic import EpisodicDataModule, split_generator
from metaft.data.episode import Episode
from metaft.data.omniglot import OmniglotDataModule
from metaft.data.sinusoid import SinusoidDataModule

__all__ = ["Episode", "EpisodicDataModule", "OmniglotDataModule", "OmniglotRunsDataModule", "SinusoidDataModule",
           "split_generator"]


def __getattr__(name: str) -> Any:
    if name == "OmniglotRunsDataModule":  # on first use (see metaft.data.omniglot)
        from metaft.data.omniglot.runs import OmniglotRunsDataModule

        return OmniglotRunsDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
