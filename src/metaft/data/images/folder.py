"""Any image folder ``ROOT/CLASS/*.{png,jpg,jpeg}``, split by class lists (``dataset.class_lists``:
names, or text files with one name a line). A split whose list is null is refused only when used
(a fine-tuning target or an evaluation needs the test classes alone)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from metaft.data.images.source import (
    IMAGE_EXTENSIONS,
    ClassLists,
    SplitNotGiven,
    class_list,
    decode_image,
)
from metaft.data.images.store import Decoded

NAME = "image_folder"


class FolderReader:
    name = NAME

    def __init__(self, data_dir: Path, layout: str = "folder", class_lists: ClassLists | None = None) -> None:
        if layout != "folder":
            raise ValueError(f"dataset.layout must be 'folder' for image_folder, got {layout!r}")
        if not class_lists or all(class_lists.get(s) is None for s in ("train", "val", "test")):
            raise ValueError("dataset=image_folder needs dataset.class_lists.{train,val,test}: the class folders of "
                             "each split (lists of names, or text files with one name a line)")
        if not data_dir.is_dir():
            raise FileNotFoundError(f"dataset.data_dir={data_dir} is not a directory; point it at a folder of "
                                    "CLASS/*.png|jpg subfolders")
        self.data_dir, self.class_lists = data_dir, class_lists

    def _images(self, split: str) -> tuple[list[str], list[list[Path]]]:
        if self.class_lists.get(split) is None:
            raise SplitNotGiven(f"dataset.class_lists.{split} is not set, but the {split} split of dataset=image_folder "
                                "is used; give its class folders (a list of names, or a text file with one a line)")
        classes = class_list(NAME, split, self.class_lists)
        files = []
        for c in classes:
            d = self.data_dir / c
            found = sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS) if d.is_dir() else []
            if not found:
                raise FileNotFoundError(f"dataset.class_lists.{split} names class {c!r}, but {d} "
                                        f"{'has no .png/.jpg images' if d.is_dir() else 'does not exist'}")
            files.append(found)
        return classes, files

    def class_counts(self, split: str) -> dict[str, int]:
        """Images per class of the split, counted from the file names (nothing decoded)."""
        classes, files = self._images(split)
        return {c: len(f) for c, f in zip(classes, files)}

    def files(self, split: str) -> list[Path]:
        """Every image of the split (their sizes and times key the cache, so an edited folder is
        decoded again)."""
        return [f for group in self._images(split)[1] for f in group]

    def read(self, split: str, image_size: int) -> Decoded:
        classes, files = self._images(split)
        labels = np.concatenate([np.full(len(g), i, dtype=np.int64) for i, g in enumerate(files)])
        flat = [f for g in files for f in g]

        def fill(out: np.ndarray) -> None:
            for i, f in enumerate(flat):
                out[i] = decode_image(f, image_size, str(f))

        return Decoded(classes, labels, fill)
