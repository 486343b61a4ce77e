from metaft.data.datamodule import EpisodicDataModule, split_generator
from metaft.data.episode import Episode
from metaft.data.omniglot import OmniglotDataModule
from metaft.data.omniglot_runs import OmniglotRunsDataModule
from metaft.data.sinusoid import SinusoidDataModule

__all__ = ["Episode", "EpisodicDataModule", "OmniglotDataModule", "OmniglotRunsDataModule", "SinusoidDataModule",
           "split_generator"]
