"""A decoded image cache: one split's images as a memory-mapped uint8 array on disk.

Layout of a store directory (``<cache_dir>/<key>/``):
    images.u8    raw uint8 ``[N, S, S, C]`` (C-order), read through ``numpy.memmap``
    labels.npy   int64 ``[N]``, the class index of every image
    meta.json    class names, the split's class list it was built for, shape and format version

Only the rows an episode needs are read (the OS pages them in), so tiered-ImageNet's
~10 GB of decoded 84 px training images need not fit in memory. A store is written once, into a
temporary directory that is renamed into place when complete: a killed writer leaves no
half-written store, and concurrent writers (DDP ranks, parallel sweep jobs) keep the first.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

STORE_VERSION = 1  # bump when decoding or resizing changes


def source_key(paths: Iterable[Path], *parts: object) -> str:
    """A cache key from the source files' identity (resolved path, size, modification time) and
    ``parts`` (layout, split, image size...). Cheap to compute, unlike a content hash of many GB;
    a replaced file gets a new key."""
    h = hashlib.sha256()
    for p in paths:
        st = p.stat()
        h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    h.update(repr((parts, STORE_VERSION)).encode())
    return h.hexdigest()[:16]


@dataclass
class ImageStore:
    """One split's images: ``images`` uint8 ``[N, S, S, C]`` (a read-only memmap), ``labels``
    int64 ``[N]`` in ``[0, len(classes))``, and the class names."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

    @property
    def channels(self) -> int:
        return int(self.images.shape[3])

    def rows_by_class(self) -> list[np.ndarray]:
        """The rows of every class, in class order."""
        order = np.argsort(self.labels, kind="stable")
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return np.split(order, np.cumsum(counts)[:-1])


@dataclass
class Decoded:
    """What a reader hands the store on a cache miss: the class names, every image's class index,
    and ``fill(out)``, which writes image ``i`` (uint8 ``[S, S, 3]``) into ``out[i]`` for all ``i``
    (streaming, so a split larger than memory is never held whole)."""

    classes: list[str]
    labels: np.ndarray
    fill: Callable[[np.ndarray], None]


def open_store(path: Path) -> ImageStore:
    meta = json.loads((path / "meta.json").read_text())
    if meta.get("version") != STORE_VERSION:
        raise ValueError(f"{path}: store version {meta.get('version')}, expected {STORE_VERSION}")
    shape = tuple(meta["shape"])
    images = np.memmap(path / "images.u8", dtype=np.uint8, mode="r", shape=shape)
    labels = np.load(path / "labels.npy")
    if len(labels) != shape[0]:
        raise ValueError(f"{path}: {len(labels)} labels for {shape[0]} images")
    return ImageStore(images, labels, list(meta["classes"]))


def open_checked(path: Path, class_list: list[str] | None) -> ImageStore:
    """``open_store``, refusing (ValueError) a store built for another class list than
    ``class_list`` (the split's list as resolved now; None: not checked)."""
    store = open_store(path)
    if class_list is not None:
        built_for = json.loads((path / "meta.json").read_text()).get("class_list")
        if built_for != list(class_list):
            changed = sorted(set(built_for or ()) ^ set(class_list))
            raise ValueError(f"built for another class list than the split's ({len(changed)} classes differ, "
                             f"{changed[:5]}; or the order, or none recorded)")
    return store


def build_store(cache_dir: Path, key: str, image_size: int, read: Callable[[], Decoded], channels: int = 3,
                class_list: list[str] | None = None) -> ImageStore:
    """The store named ``key`` under ``cache_dir``: opened if present (and built for
    ``class_list``, the split's class list, when given), else decoded by ``read()`` (called only
    then: reading the distributed files is the slow part) and renamed into place."""
    final = cache_dir / key
    if (final / "meta.json").is_file():
        try:
            return open_checked(final, class_list)
        except (OSError, ValueError, KeyError) as e:  # a damaged or stale cache is only a cache: rebuild it
            log.warning("image cache %s is unusable (%s); decoding again", final, e)
            shutil.rmtree(final, ignore_errors=True)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=f".{key}.", suffix=".tmp"))
    except OSError as e:
        raise PermissionError(f"cannot write the decoded-image cache under dataset.cache_dir={cache_dir} ({e}); "
                              "set dataset.cache_dir (or paths.cache_dir) to a writable directory") from e
    try:
        decoded = read()
        shape = (len(decoded.labels), image_size, image_size, channels)
        out = np.memmap(tmp / "images.u8", dtype=np.uint8, mode="w+", shape=shape)
        decoded.fill(out)
        out.flush()
        del out
        np.save(tmp / "labels.npy", np.asarray(decoded.labels, dtype=np.int64))
        meta = {"version": STORE_VERSION, "shape": list(shape), "classes": list(decoded.classes),
                "class_list": None if class_list is None else list(class_list)}
        (tmp / "meta.json").write_text(json.dumps(meta))
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished first: keep its store
            if not (final / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return open_checked(final, class_list)
