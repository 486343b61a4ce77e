from metaft.data.datamodule import EpisodicDataModule, split_generator
from metaft.data.episode import Episode
from metaft.data.sinusoid import SinusoidDataModule

__all__ = ["Episode", "EpisodicDataModule", "SinusoidDataModule", "split_generator"]
