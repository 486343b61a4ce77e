"""Omniglot storage: the official zips (checked, downloaded on request), decoded once into a cache.

Every PNG is decoded once, straight from ``images_background.zip`` / ``images_evaluation.zip``,
resized and stored as one uint8 tensor file per (zip, image size) in a cache directory. After
that a run loads ~25 MB and samples every episode with tensor indexing in memory.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from metaft.data.omniglot.images import SIDE, area_resize, ink_image

log = logging.getLogger(__name__)

DRAWERS = 20  # every Omniglot character is drawn by 20 people
SETS = ("images_background", "images_evaluation")
OFFICIAL_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/{name}.zip"
# MD5 of the official zips as published by torchvision (datasets/omniglot.py); no SHA256 of the
# official files is published. The project's shared copies are rebuilt zips (same PNG bytes, other
# container bytes), so these only apply to files fetched with ``download=true``.
OFFICIAL_MD5 = {"images_background": "68d2efa1b9178cc56df9314c21c6e718",
                "images_evaluation": "6b91aef0f799c5bb55b94e3f2daec811"}
PNG_COUNT = {"images_background": 19_280, "images_evaluation": 13_180}
CACHE_VERSION = 1  # bump when the decoding or preprocessing changes
_MEMBER = re.compile(r"^(images_background|images_evaluation)/([^/]+/character\d+)/[^/]+\.png$")


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/metaft``, else ``~/.cache/metaft`` (never inside the read-only data)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "metaft"


def _unusable_zip(path: Path, what: str) -> ValueError:
    return ValueError(
        f"{path}: {what}. The file is corrupt or truncated; replace it with a good copy (delete it and "
        f"set dataset.download=true to fetch the official {path.name} from {OFFICIAL_URL.format(name=path.stem)})."
    )


def decode_zip(path: Path, image_size: int) -> tuple[list[str], Tensor]:
    """Decode every PNG of an Omniglot zip without extracting it.

    Returns the characters (``ALPHABET/characterNN``, sorted) and their images, uint8
    ``[characters, 20, image_size, image_size]``, drawers in file-name order.
    """
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise _unusable_zip(path, f"not a readable zip file ({e})") from e
    groups: dict[str, list[str]] = {}
    with archive:
        for member in archive.namelist():
            m = _MEMBER.match(member)
            if m:
                groups.setdefault(m.group(2), []).append(member)
        if not groups:
            raise _unusable_zip(path, "contains no images_*/ALPHABET/characterNN/*.png members")
        chars = sorted(groups)
        out = torch.empty(len(chars), DRAWERS, image_size, image_size, dtype=torch.uint8)
        chunk = 50  # characters resized together: 1,000 images, ~44 MB of float32 at a time
        raw = torch.empty(chunk, DRAWERS, SIDE, SIDE, dtype=torch.uint8)
        for start in range(0, len(chars), chunk):
            block = chars[start : start + chunk]
            for i, char in enumerate(block):
                members = sorted(groups[char])
                if len(members) != DRAWERS:
                    raise _unusable_zip(path, f"{char} has {len(members)} images, Omniglot has {DRAWERS}")
                for j, member in enumerate(members):
                    try:
                        with Image.open(io.BytesIO(archive.read(member))) as img:
                            raw[i, j] = ink_image(img)
                    except (zipfile.BadZipFile, zlib.error, UnidentifiedImageError, OSError, ValueError) as e:
                        raise _unusable_zip(path, f"member {member} cannot be read as a PNG ({e})") from e
            out[start : start + len(block)] = area_resize(raw[: len(block)], image_size)
    return chars, out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_images(path: Path, image_size: int, cache_dir: Path) -> tuple[list[str], Tensor]:
    """``decode_zip`` through a cache file named by the zip's content hash and the image size,
    so a changed zip or another size gets its own file. Written atomically (temp + rename)."""
    key = f"{path.stem}_{image_size}px_{_sha256(path)[:16]}_v{CACHE_VERSION}.pt"
    cached = cache_dir / key
    if cached.is_file():
        try:
            data = torch.load(cached, map_location="cpu", weights_only=True)
            return list(data["chars"]), data["images"]
        except Exception as e:  # a damaged cache is only a cache: rebuild it
            log.warning("Omniglot cache %s is unreadable (%s); decoding %s again", cached, e, path)
    chars, images = decode_zip(path, image_size)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=f".{key}.", suffix=".tmp")
        os.close(fd)
        try:
            torch.save({"chars": chars, "images": images}, tmp)
            os.replace(tmp, cached)
        finally:
            Path(tmp).unlink(missing_ok=True)
    except OSError as e:  # e.g. a read-only home: work without a cache, but say why it is slow
        log.warning("cannot write the Omniglot cache to %s (%s); set dataset.cache_dir to a writable "
                    "directory so later runs start in seconds", cache_dir, e)
    return chars, images


def download_zip(name: str, data_dir: Path, url: str | None = None, md5: str | None = None) -> Path:
    """Fetch the official ``{name}.zip`` into ``data_dir``; check its MD5 and PNG count.

    The download goes to a temporary file that is renamed only once verified, so an interrupted
    or bad download never leaves a partial ``{name}.zip`` behind.
    """
    url = url or OFFICIAL_URL.format(name=name)
    md5 = md5 or OFFICIAL_MD5[name]
    dest = data_dir / f"{name}.zip"
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=data_dir, prefix=f".{name}.", suffix=".part")
    except OSError as e:
        raise PermissionError(
            f"dataset.download=true cannot write to dataset.data_dir={data_dir} ({e}); set dataset.data_dir "
            "to a writable directory (the zips are downloaded there)"
        ) from e
    try:
        log.info("downloading %s -> %s", url, dest)
        h = hashlib.md5(usedforsecurity=False)
        try:
            with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=60) as response:
                for block in iter(lambda: response.read(1 << 20), b""):
                    h.update(block)
                    f.write(block)
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            raise ConnectionError(f"could not download {url} ({e}); check the network, or put {name}.zip by hand "
                                  f"into dataset.data_dir={data_dir}") from e
        if h.hexdigest() != md5:
            raise ValueError(f"download of {url} has MD5 {h.hexdigest()}, the official file has {md5}; "
                             "the download is damaged or the file changed upstream. Try again later.")
        try:
            with zipfile.ZipFile(tmp) as z:
                pngs = sum(n.endswith(".png") for n in z.namelist())
        except zipfile.BadZipFile as e:
            raise ValueError(f"download of {url} is not a zip file ({e})") from e
        if pngs != PNG_COUNT[name]:
            raise ValueError(f"download of {url} holds {pngs} PNGs, expected {PNG_COUNT[name]}")
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return dest


def zip_paths(data_dir: Path, download: bool, key: str = "dataset") -> dict[str, Path]:
    """The two official zips under ``data_dir``, fetched when missing and ``download``; else a clear
    error naming ``key``'s settings (``dataset`` in meta-training, ``target`` in fine-tuning)."""
    paths = {name: data_dir / f"{name}.zip" for name in SETS}
    for name, p in paths.items():
        if p.is_file():
            continue
        if download:
            download_zip(name, data_dir)
            continue
        where = "does not exist" if not data_dir.is_dir() else f"has no {p.name}"
        if not data_dir.is_absolute():  # relative paths are from the directory train.py runs in
            where += f" (here: {data_dir.resolve()})"
        urls = f"{OFFICIAL_URL.format(name=SETS[0])} and {OFFICIAL_URL.format(name=SETS[1])}"
        fix = (f"or add dataset.download=true to fetch the official zips ({urls}) into it" if key == "dataset" else
               f"fine-tuning does not download: put {urls} there by hand, or run meta-training once with "
               "dataset.download=true")
        raise FileNotFoundError(
            f"{key}.data_dir={data_dir} {where}. Set paths.data_dir to the folder holding "
            f"omniglot/images_background.zip and omniglot/images_evaluation.zip (or {key}.data_dir to that "
            f"omniglot folder); {fix}."
        )
    return paths
