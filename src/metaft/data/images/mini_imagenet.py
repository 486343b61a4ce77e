"""mini-ImageNet (Vinyals et al. 2016; the Ravi & Larochelle 2017 split of 64 / 16 / 20 classes)
in the three layouts it is distributed in.

- ``pickle``: ``mini-imagenet-cache-{train,val,test}.pkl``, each a dict with ``image_data``
  (uint8 ``[N, 84, 84, 3]``) and ``class_dict`` (``{wnid: [row indices]}``).
- ``metaoptnet``: MetaOptNet's ``miniImageNet_category_split_{train_phase_train,val,test}.pickle``,
  dicts with ``data`` (uint8 ``[N, 84, 84, 3]``), ``labels`` (one int a row) and, when present,
  ``catname2label`` (``{wnid: label}``); Python 2 pickles.
- ``csv``: Ravi's ``{train,val,test}.csv`` (columns ``filename,label``) and an ``images/`` folder
  of the ImageNet JPEGs, resized here to ``image_size``.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from metaft.data.images.source import (
    ClassLists,
    bad_file,
    check_classes,
    class_list,
    decode_image,
    fill_from_array,
    load_pickle,
    missing_file,
)
from metaft.data.images.store import Decoded

NAME = "mini_imagenet"
LAYOUTS = ("pickle", "metaoptnet", "csv")
_FILES = {
    "pickle": "mini-imagenet-cache-{split}.pkl",
    "metaoptnet": "miniImageNet_category_split_{mo}.pickle",
    "csv": "{split}.csv",
}
_MO_SPLIT = {"train": "train_phase_train", "val": "val", "test": "test"}
_HOW = {
    "pickle": "Put the mini-imagenet-cache-{train,val,test}.pkl files (as distributed with Ren et al.'s "
              "few-shot-ssl data) there, or choose dataset.layout=metaoptnet|csv for the other layouts.",
    "metaoptnet": "Put MetaOptNet's miniImageNet_category_split_{train_phase_train,val,test}.pickle files there, "
                  "or choose dataset.layout=pickle|csv.",
    "csv": "Put Ravi & Larochelle's {train,val,test}.csv and an images/ folder of the JPEGs they name there, "
           "or choose dataset.layout=pickle|metaoptnet.",
}


class MiniImageNetReader:
    """Reads one split of mini-ImageNet in ``layout`` from ``data_dir``."""

    name = NAME

    def __init__(self, data_dir: Path, layout: str = "pickle", class_lists: ClassLists | None = None) -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"dataset.layout must be one of {', '.join(LAYOUTS)} for mini_imagenet, got {layout!r}")
        self.data_dir, self.layout, self.class_lists = data_dir, layout, class_lists

    def path(self, split: str) -> Path:
        return self.data_dir / _FILES[self.layout].format(split=split, mo=_MO_SPLIT[split])

    def files(self, split: str) -> list[Path]:
        """The files ``split`` is read from (checked to exist: the cache key depends on them)."""
        p = self.path(split)
        if not p.is_file():
            raise missing_file(p, NAME, _HOW[self.layout])
        if self.layout == "csv":
            images = self.data_dir / "images"
            if not images.is_dir():
                raise missing_file(images, NAME, _HOW["csv"])
            return [p, images]
        return [p]

    def read(self, split: str, image_size: int) -> Decoded:
        expected = class_list(NAME, split, self.class_lists)
        return getattr(self, f"_read_{self.layout}")(split, image_size, expected)

    def _read_pickle(self, split: str, image_size: int, expected: list[str]) -> Decoded:
        path = self.path(split)
        data = load_pickle(path)
        if not isinstance(data, dict) or not {"image_data", "class_dict"} <= set(data):
            raise bad_file(path, "is not a mini-ImageNet cache pickle (a dict with image_data and class_dict)")
        images, class_dict = data["image_data"], data["class_dict"]
        _check_array(path, images, "image_data")
        check_classes(path, list(class_dict), expected, split)
        rows = [np.asarray(class_dict[c], dtype=np.int64) for c in expected]
        if any(len(r) == 0 or r.max() >= len(images) or r.min() < 0 for r in rows):
            raise bad_file(path, f"class_dict names rows outside image_data's {len(images)} images (truncated?)")
        labels = np.concatenate([np.full(len(r), i) for i, r in enumerate(rows)])
        return Decoded(expected, labels, fill_from_array(images, np.concatenate(rows), image_size))

    def _read_metaoptnet(self, split: str, image_size: int, expected: list[str]) -> Decoded:
        path = self.path(split)
        data = load_pickle(path)
        if not isinstance(data, dict) or not {"data", "labels"} <= set(data):
            raise bad_file(path, "is not a MetaOptNet mini-ImageNet pickle (a dict with data and labels)")
        images, raw = data["data"], np.asarray(data["labels"], dtype=np.int64)
        _check_array(path, images, "data")
        if len(raw) != len(images):
            raise bad_file(path, f"has {len(raw)} labels for {len(images)} images (truncated?)")
        ids = sorted(set(raw.tolist()))
        names = {int(v): str(k) for k, v in (data.get("catname2label") or {}).items()}
        if names:
            found = [names.get(i, f"label{i}") for i in ids]
            check_classes(path, found, expected, split)
            order = [ids[found.index(c)] for c in expected]
        else:  # no names in the file: the split's classes in label order
            if len(ids) != len(expected):
                raise bad_file(path, f"has {len(ids)} classes, the {split} split has {len(expected)}")
            order = ids
        index = {label: i for i, label in enumerate(order)}
        rows = np.argsort(np.array([index[int(v)] for v in raw]), kind="stable")
        labels = np.array([index[int(v)] for v in raw])[rows]
        return Decoded(expected, labels, fill_from_array(images, rows, image_size))

    def _read_csv(self, split: str, image_size: int, expected: list[str]) -> Decoded:
        path = self.path(split)
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or not {"filename", "label"} <= set(reader.fieldnames):
                raise bad_file(path, f"has columns {reader.fieldnames}, expected filename,label")
            entries = [(row["filename"], row["label"]) for row in reader]
        check_classes(path, sorted({label for _, label in entries}), expected, split)
        index = {c: i for i, c in enumerate(expected)}
        entries.sort(key=lambda e: index[e[1]])
        labels = np.array([index[label] for _, label in entries], dtype=np.int64)
        files = [self.data_dir / "images" / name for name, _ in entries]
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise missing_file(missing[0], NAME, f"{path.name} names {len(missing)} images that images/ lacks.")

        def fill(out: np.ndarray) -> None:
            for i, f in enumerate(files):
                out[i] = decode_image(f, image_size, str(f))

        return Decoded(expected, labels, fill)


def _check_array(path: Path, images: object, key: str) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        desc = f"{type(images).__name__} {getattr(images, 'dtype', '')} {list(getattr(images, 'shape', []))}"
        raise bad_file(path, f"{key} is {desc}, expected uint8 [N, H, W, 3]")
