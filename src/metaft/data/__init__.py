from metaft.data.episodic import EpisodicDataModule, split_generator
from metaft.data.episode import Episode
from metaft.data.omniglot import OmniglotDataModule, OmniglotRunsDataModule
from metaft.data.sinusoid import SinusoidDataModule

__all__ = ["Episode", "EpisodicDataModule", "OmniglotDataModule", "OmniglotRunsDataModule", "SinusoidDataModule",
           "split_generator"]
