"""CUB-200-2011 (Wah et al. 2011) with the 100 / 50 / 50 class split of Chen et al. 2019 ("A Closer
Look at Few-shot Classification": the 200 class folders in sorted order, index i mod 2 = 0
training, i mod 4 = 1 validation, i mod 4 = 3 test), read from ``CUB_200_2011.tgz``
(``CUB_200_2011/images/<class>/*.jpg``) without unpacking it, or from the unpacked folder.
Images are resized whole to ``image_size`` (the birds' bounding boxes are not used).
"""
from __future__ import annotations

import re
import tarfile
from pathlib import Path

import numpy as np

from metaft.data.images.source import (
    IMAGE_EXTENSIONS,
    ClassLists,
    bad_file,
    check_classes,
    check_md5,
    class_list,
    decode_image,
    download,
    missing_file,
)
from metaft.data.images.store import Decoded

NAME = "cub"
ARCHIVE = "CUB_200_2011.tgz"
URL = "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz?download=1"
MD5 = "97eceeb196236b17998738112f37df78"  # of the archive published by Caltech
_MEMBER = re.compile(r"^(?:\./)?CUB_200_2011/images/([^/]+)/([^/]+)$")


class CubReader:
    name = NAME

    def __init__(self, data_dir: Path, layout: str = "archive", class_lists: ClassLists | None = None,
                 download: bool = False, verify: bool = True) -> None:
        if layout != "archive":
            raise ValueError(f"dataset.layout must be 'archive' for cub (the .tgz or its unpacked folder), got {layout!r}")
        self.data_dir, self.class_lists, self.download, self.verify = data_dir, class_lists, download, verify

    def files(self, split: str) -> list[Path]:
        archive, folder = self.data_dir / ARCHIVE, self.data_dir / "CUB_200_2011" / "images"
        if archive.is_file():
            return [archive]
        if folder.is_dir():
            return [folder]
        if self.download:
            return [download(URL, archive, MD5)]
        raise missing_file(archive, NAME, f"Set dataset.download=true to fetch it from {URL}, or put it (or the "
                           "CUB_200_2011/ folder it unpacks to) there.")

    def read(self, split: str, image_size: int) -> Decoded:
        source = self.files(split)[0]
        expected = class_list(NAME, split, self.class_lists)
        index = {c: i for i, c in enumerate(expected)}
        found: set[str] = set()
        decoded: list[tuple[int, str, np.ndarray]] = []
        if source.is_dir():
            for d in sorted(p for p in source.iterdir() if p.is_dir()):
                found.add(d.name)
                if d.name in index:
                    for f in sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS):
                        decoded.append((index[d.name], f.name, decode_image(f, image_size, str(f))))
        else:
            if self.verify:
                check_md5(source, MD5)
            try:
                with tarfile.open(source, "r:gz") as tar:
                    for member in tar:  # one streaming pass over the archive
                        m = _MEMBER.match(member.name)
                        if not (m and member.isfile() and m.group(2).lower().endswith(IMAGE_EXTENSIONS)):
                            continue
                        found.add(m.group(1))
                        if m.group(1) in index:
                            data = tar.extractfile(member).read()
                            decoded.append((index[m.group(1)], m.group(2),
                                            decode_image(data, image_size, f"{source}::{member.name}")))
            except (tarfile.TarError, EOFError, OSError) as e:
                raise bad_file(source, f"cannot be read as CUB's .tgz archive ({type(e).__name__}: {e}); it is "
                               "truncated or damaged") from e
        if not found:
            raise bad_file(source, "has no CUB_200_2011/images/<class>/*.jpg images")
        check_classes(source, [c for c in expected if c in found], expected, split)
        decoded.sort(key=lambda t: (t[0], t[1]))  # class, then file name: the same order from either source
        labels = np.array([t[0] for t in decoded], dtype=np.int64)

        def fill(out: np.ndarray) -> None:
            for i, (_, _, img) in enumerate(decoded):
                out[i] = img

        return Decoded(expected, labels, fill)
