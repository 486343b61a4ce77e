"""What every reader of a distributed image dataset shares: class lists, decoding and resizing,
checksums, downloads, and error messages that name the file and what was expected."""
from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SPLIT_DIR = Path(__file__).parent / "splits"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
# A class list: names, or a text file of one name a line.
ClassLists = Mapping[str, Sequence[str] | str]


class BadFileError(ValueError):
    """A distributed file that exists but is not what the reader expects (wrong, truncated, swapped)."""


class SplitNotGiven(ValueError):
    """A split whose classes were not given (``dataset.class_lists.<split>: null`` for an image
    folder): an error only once that split is used."""


def bad_file(path: Path, what: str, fix: str = "replace it with a good copy of the distributed file") -> BadFileError:
    return BadFileError(f"{path}: {what}; {fix}")


def missing_file(path: Path, name: str, how: str) -> FileNotFoundError:
    """The error for a file that is not there: which file, where, and how to get it."""
    where = path.parent
    note = "" if where.is_absolute() else f" (here: {where.resolve()})"
    return FileNotFoundError(f"dataset {name} needs {path.name} in dataset.data_dir={where}{note}, which has no such "
                             f"file. {how}")


def packaged_classes(name: str, split: str) -> list[str]:
    """The standard class list of ``split`` shipped in ``splits/<name>/<split>.txt``."""
    return (SPLIT_DIR / name / f"{split}.txt").read_text().split("\n")[:-1]


def class_list(name: str, split: str, overrides: ClassLists | None) -> list[str]:
    """``split``'s class list: ``overrides[split]`` (a list of names, or a text file with one name
    a line) when given, else the packaged standard list."""
    if overrides and overrides.get(split) is not None:
        given = overrides[split]
        if isinstance(given, (str, os.PathLike)):
            path = Path(given).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"dataset.class_lists.{split}={given} is not a file (one class name a line)")
            names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        else:
            names = [str(c) for c in given]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"dataset.class_lists.{split} must list distinct class names, got {list(names)[:5]}...")
        return names
    if not (SPLIT_DIR / name).is_dir():
        raise ValueError(f"dataset {name} has no standard class lists: give dataset.class_lists.{{train,val,test}} "
                         "(lists of class names, or text files with one name a line)")
    return packaged_classes(name, split)


def load_pickle(path: Path) -> Any:
    """A pickle as distributed (Python 2 pickles included: latin1 keeps numpy's byte strings)."""
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError) as e:
        raise bad_file(path, f"cannot be read as a pickle ({type(e).__name__}: {e}); the file is truncated or "
                       "not the distributed one") from e


def md5sum(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_md5(path: Path, expected: str) -> None:
    actual = md5sum(path)
    if actual != expected:
        raise bad_file(path, f"MD5 {actual} ({path.stat().st_size} bytes), the published file has MD5 {expected}: "
                       "it is truncated or another file", "delete it and set dataset.download=true, or put the "
                       "official file there")


def download(url: str, dest: Path, md5: str) -> Path:
    """Fetch ``url`` to ``dest`` through a temporary file renamed only once its MD5 is right."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    except OSError as e:
        raise PermissionError(f"dataset.download=true cannot write to dataset.data_dir={dest.parent} ({e}); set "
                              "dataset.data_dir to a writable directory") from e
    try:
        log.info("downloading %s -> %s", url, dest)
        try:
            with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=60) as response:
                for block in iter(lambda: response.read(1 << 20), b""):
                    f.write(block)
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            raise ConnectionError(f"could not download {url} ({e}); put {dest.name} there by hand: {dest}") from e
        if md5sum(Path(tmp)) != md5:
            raise BadFileError(f"download of {url} does not have the published MD5 {md5}; try again later")
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return dest


def decode_image(data: bytes | Path, image_size: int, what: str) -> np.ndarray:
    """An encoded image (bytes or a file) as RGB uint8 ``[S, S, 3]``, resized to ``image_size``
    with Pillow's antialiased bilinear filter (the whole image, aspect ratio not kept, as the
    standard mini-ImageNet and CUB preprocessing does)."""
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data) as img:
            img = img.convert("RGB")
            if img.size != (image_size, image_size):
                img = img.resize((image_size, image_size), Image.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise BadFileError(f"{what} cannot be decoded as an image ({e}); the file is truncated or damaged") from e


def resize_array(images: np.ndarray, image_size: int) -> np.ndarray:
    """uint8 ``[n, H, W, 3]`` -> uint8 ``[n, S, S, 3]`` (antialiased bilinear; no copy at the same size)."""
    if images.shape[1:3] == (image_size, image_size):
        return images
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
    return x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def fill_from_array(images: np.ndarray, rows: np.ndarray, image_size: int, chunk: int = 2048):
    """A ``fill`` that copies ``images[rows]`` (resized) into the store in chunks."""

    def fill(out: np.ndarray) -> None:
        for start in range(0, len(rows), chunk):
            part = rows[start:start + chunk]
            out[start:start + len(part)] = resize_array(np.asarray(images[part]), image_size)

    return fill


def check_classes(path: Path, found: Sequence[str], expected: Sequence[str], split: str) -> None:
    """Refuse a file whose classes are not the split's (a swapped or foreign file)."""
    if set(found) != set(expected):
        extra, lacking = sorted(set(found) - set(expected)), sorted(set(expected) - set(found))
        raise bad_file(path, f"its classes are not the {len(expected)} classes of the {split} split "
                       f"(not in the split: {extra[:5]}; missing: {lacking[:5]})",
                       f"check that it is the {split} file, or give dataset.class_lists.{split}")
