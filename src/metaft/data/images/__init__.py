"""Natural-image few-shot benchmarks: readers of the distributed files, a memory-mapped decoded
cache, episode sampling, augmentation, and fine-tuning targets (see ``FewShotImages``)."""
from metaft.data.images.datamodule import FewShotImages
from metaft.data.images.readers import LAYOUTS, make_reader
from metaft.data.images.store import ImageStore

__all__ = ["LAYOUTS", "FewShotImages", "ImageStore", "make_reader"]
