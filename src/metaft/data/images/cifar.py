"""CIFAR-FS (Bertinetto et al. 2019: 64 / 16 / 20 CIFAR-100 classes) and FC100 (Oreshkin et al.
2018: 12 / 4 / 4 CIFAR-100 superclasses, i.e. 60 / 20 / 20 classes), both from the CIFAR-100
python archive ``cifar-100-python.tar.gz`` (or the folder it unpacks to). Every class keeps all
600 of its images (CIFAR's train and test images together), as both benchmarks do.
"""
from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from metaft.data.images.source import (
    BadFileError,
    ClassLists,
    bad_file,
    check_classes,
    check_md5,
    class_list,
    download,
    fill_from_array,
    missing_file,
)
from metaft.data.images.store import Decoded

ARCHIVE = "cifar-100-python.tar.gz"
URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
MD5 = "eb9058c3a382ffc7106e4002c42a8d85"  # published with the dataset
MEMBERS = ("train", "test", "meta")


class CifarReader:
    """``name``: ``cifar_fs`` (split by fine classes) or ``fc100`` (split by superclasses)."""

    def __init__(self, data_dir: Path, name: str, layout: str = "archive", class_lists: ClassLists | None = None,
                 download: bool = False, verify: bool = True) -> None:
        if layout != "archive":
            raise ValueError(f"dataset.layout must be 'archive' for {name}, got {layout!r}")
        self.data_dir, self.name, self.class_lists = data_dir, name, class_lists
        self.download, self.verify = download, verify

    def files(self, split: str) -> list[Path]:
        archive, folder = self.data_dir / ARCHIVE, self.data_dir / "cifar-100-python"
        if archive.is_file():
            return [archive]
        if all((folder / m).is_file() for m in MEMBERS):
            return [folder / m for m in MEMBERS]
        if self.download:
            return [download(URL, archive, MD5)]
        raise missing_file(archive, self.name, f"Set dataset.download=true to fetch it from {URL}, or put it (or "
                           "the cifar-100-python/ folder it unpacks to) there.")

    def _load(self, split: str) -> dict[str, Any]:
        files = self.files(split)
        parts: dict[str, Any] = {}
        if files[0].name == ARCHIVE:
            archive = files[0]
            if self.verify:
                check_md5(archive, MD5)
            try:
                with tarfile.open(archive, "r:gz") as tar:
                    for m in MEMBERS:
                        f = tar.extractfile(f"cifar-100-python/{m}")
                        parts[m] = _unpickle(f.read(), archive, m) if f else None
            except (tarfile.TarError, EOFError, OSError, KeyError) as e:
                raise bad_file(archive, f"is not a readable CIFAR-100 archive with cifar-100-python/{{train,test,meta}} "
                               f"({type(e).__name__}: {e})") from e
        else:
            for m, path in zip(MEMBERS, files):
                parts[m] = _unpickle(path.read_bytes(), path, "")
        return parts

    def read(self, split: str, image_size: int) -> Decoded:
        parts = self._load(split)
        where = self.files(split)[0]
        meta = parts["meta"]
        try:
            fine_names, coarse_names = list(meta["fine_label_names"]), list(meta["coarse_label_names"])
            data = np.concatenate([np.asarray(parts[m]["data"], dtype=np.uint8) for m in ("train", "test")])
            fine = np.concatenate([np.asarray(parts[m]["fine_labels"]) for m in ("train", "test")])
            coarse = np.concatenate([np.asarray(parts[m]["coarse_labels"]) for m in ("train", "test")])
        except (KeyError, TypeError, ValueError) as e:
            raise bad_file(where, f"lacks CIFAR-100's data / fine_labels / coarse_labels / *_label_names ({e})") from e
        if data.ndim != 2 or data.shape[1] != 3072 or len(fine) != len(data) or len(coarse) != len(data):
            raise bad_file(where, f"data is {list(data.shape)} with {len(fine)} labels, expected [N, 3072] with N labels")
        expected = class_list(self.name, split, self.class_lists)
        if self.name == "fc100":  # the split lists superclasses; its classes are their fine classes
            check_classes(where, [c for c in expected if c in coarse_names], expected, split)
            wanted = {coarse_names.index(c) for c in expected}
            fine_ids = sorted({int(f) for f, c in zip(fine, coarse) if int(c) in wanted})
            classes = [fine_names[i] for i in fine_ids]
        else:
            check_classes(where, [c for c in expected if c in fine_names], expected, split)
            classes = expected
            fine_ids = [fine_names.index(c) for c in classes]
        index = np.full(len(fine_names), -1)
        index[fine_ids] = np.arange(len(fine_ids))
        all_labels = index[fine]
        rows = np.flatnonzero(all_labels >= 0)
        rows = rows[np.argsort(all_labels[rows], kind="stable")]
        images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # CIFAR rows are channel-major
        return Decoded(classes, all_labels[rows], fill_from_array(images, rows, image_size))


def _unpickle(raw: bytes, path: Path, member: str) -> Any:
    try:
        return pickle.load(io.BytesIO(raw), encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise BadFileError(f"{path}{'::' + member if member else ''}: cannot be read as a CIFAR-100 pickle ({e}); "
                           "the file is truncated or damaged; replace it with the official archive") from e
