"""The benchmarks by name: which reader reads them and in which layouts."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from metaft.data.images.cifar import CifarReader
from metaft.data.images.cub import CubReader
from metaft.data.images.folder import FolderReader
from metaft.data.images.mini_imagenet import MiniImageNetReader
from metaft.data.images.source import ClassLists
from metaft.data.images.store import Decoded
from metaft.data.images.tiered_imagenet import TieredImageNetReader


class Reader(Protocol):
    def files(self, split: str) -> list[Path]:
        """The distributed files ``split`` is read from; raises FileNotFoundError naming what to put where."""

    def read(self, split: str, image_size: int) -> Decoded:
        """Decode ``split`` (called on a cache miss only)."""


# name -> (default layout, all layouts)
LAYOUTS: dict[str, tuple[str, ...]] = {
    "mini_imagenet": ("pickle", "metaoptnet", "csv"),
    "tiered_imagenet": ("pickle",),
    "cifar_fs": ("archive",),
    "fc100": ("archive",),
    "cub": ("archive",),
    "image_folder": ("folder",),
}


def make_reader(name: str, data_dir: Path, layout: str | None = None, class_lists: ClassLists | None = None,
                download: bool = False, verify: bool = True) -> Reader:
    """The reader of benchmark ``name`` (see ``LAYOUTS``); ``layout`` None: its first layout."""
    if name not in LAYOUTS:
        raise ValueError(f"dataset.name must be one of {', '.join(LAYOUTS)}, got {name!r}")
    layout = layout or LAYOUTS[name][0]
    kw: dict[str, Any] = {"layout": layout, "class_lists": class_lists}
    if name == "mini_imagenet":
        reader: Reader = MiniImageNetReader(data_dir, **kw)
    elif name == "tiered_imagenet":
        reader = TieredImageNetReader(data_dir, **kw)
    elif name in ("cifar_fs", "fc100"):
        reader = CifarReader(data_dir, name, download=download, verify=verify, **kw)
    elif name == "cub":
        reader = CubReader(data_dir, download=download, verify=verify, **kw)
    else:
        reader = FolderReader(data_dir, **kw)
    if download and name not in ("cifar_fs", "fc100", "cub"):
        for split in ("train", "val", "test"):
            try:
                reader.files(split)
            except FileNotFoundError as e:  # say which file is missing, not only that none can be fetched
                raise FileNotFoundError(f"dataset.download=true, but {name} has no stable official download address; "
                                        f"{e}") from None
    return reader
