"""tiered-ImageNet (Ren et al. 2018: 351 / 97 / 160 classes under 20 / 6 / 8 ImageNet
categories) as distributed: ``{split}_images_png.pkl`` (a list of PNG-encoded byte arrays, 84 px)
and ``{split}_labels.pkl`` (a dict with ``label_specific`` per image, ``label_specific_str``
names, ``label_general`` / ``label_general_str`` for the categories).

The split is defined by the files themselves. Their class names are checked against
``dataset.class_lists`` when given, else against the standard lists (Ren et al.'s wnids,
``splits/tiered_imagenet/``) when the files name classes by wnid; the distributed files name them
in words (``label_specific_str`` holds synset names), and then only the class count is checked.
The PNGs were written by OpenCV from BGR arrays, so decoding them with Pillow gives RGB. They are
decoded once into the memory-mapped store, streaming: the decoded training split (~9.5 GB at
84 px) is never held in memory.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from metaft.data.images.source import (
    ClassLists,
    bad_file,
    check_classes,
    class_list,
    decode_image,
    load_pickle,
    missing_file,
)
from metaft.data.images.store import Decoded

NAME = "tiered_imagenet"
CLASS_COUNT = {"train": 351, "val": 97, "test": 160}
_WNID = re.compile(r"^n\d{8}$")
_HOW = ("Put the {split}_images_png.pkl and {split}_labels.pkl files of tiered-ImageNet (as distributed with "
        "Ren et al.'s few-shot-ssl code) there; there is no official download address.")


class TieredImageNetReader:
    name = NAME

    def __init__(self, data_dir: Path, layout: str = "pickle", class_lists: ClassLists | None = None) -> None:
        if layout != "pickle":
            raise ValueError(f"dataset.layout must be 'pickle' for tiered_imagenet, got {layout!r}")
        self.data_dir, self.class_lists = data_dir, class_lists

    def files(self, split: str) -> list[Path]:
        paths = [self.data_dir / f"{split}_images_png.pkl", self.data_dir / f"{split}_labels.pkl"]
        for p in paths:
            if not p.is_file():
                raise missing_file(p, NAME, _HOW.format(split=split))
        return paths

    def read(self, split: str, image_size: int) -> Decoded:
        images_path, labels_path = self.files(split)
        meta = load_pickle(labels_path)
        if not isinstance(meta, dict) or "label_specific" not in meta:
            raise bad_file(labels_path, "is not a tiered-ImageNet labels pickle (a dict with label_specific)")
        raw = np.asarray(meta["label_specific"], dtype=np.int64)
        ids = sorted(set(raw.tolist()))
        names = meta.get("label_specific_str")
        found = [str(names[i]) if names is not None and i < len(names) else f"label{i}" for i in ids]
        given = bool(self.class_lists and self.class_lists.get(split) is not None)
        if given or all(_WNID.match(name) for name in found):
            expected = class_list(NAME, split, self.class_lists)
            check_classes(labels_path, found, expected, split)
        elif len(ids) != CLASS_COUNT[split]:
            raise bad_file(labels_path, f"has {len(ids)} classes, tiered-ImageNet's {split} split has "
                           f"{CLASS_COUNT[split]}", f"check that it is the {split} file, or give dataset.class_lists."
                           f"{split} for another split")
        else:
            expected = found
        pngs = load_pickle(images_path)
        if not hasattr(pngs, "__len__") or len(pngs) != len(raw):
            raise bad_file(images_path, f"holds {len(pngs) if hasattr(pngs, '__len__') else 'no list of'} images, "
                           f"{labels_path.name} labels {len(raw)} (truncated or mismatched files?)")
        index = {label: expected.index(name) for label, name in zip(ids, found)}
        labels_all = np.array([index[int(v)] for v in raw], dtype=np.int64)
        rows = np.argsort(labels_all, kind="stable")

        def fill(out: np.ndarray) -> None:
            for i, r in enumerate(rows.tolist()):
                out[i] = decode_image(np.asarray(pngs[r], dtype=np.uint8).tobytes(), image_size,
                                      f"{images_path}: image {r}")

        return Decoded(expected, labels_all[rows], fill)
