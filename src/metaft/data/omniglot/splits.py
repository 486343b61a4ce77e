"""Omniglot's class splits: Vinyals et al. 2016's lists (rotations as classes) and Lake's alphabets.

A class is a ``(character row, quarter turns)`` pair; character rows index the store's characters
(background zip first, then evaluation).
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor

_SPLIT_LINE = re.compile(r"^([^/]+/character\d+)/rot(\d{3})$")


VINYALS_SOURCE = "data/omniglot/splits/vinyals/ of github.com/jakesnell/prototypical-networks"


def vinyals_split_files(data_dir: Path, download: bool = False) -> dict[str, Path]:
    """The Vinyals class lists ``splits/vinyals/{train,val,test}.txt`` under ``data_dir``, checked
    present. No official source publishes them for download (they come with the ProtoNet code), so
    ``download=true`` cannot fetch them: checked before any zip is fetched, the error says which
    files to put where."""
    files = {s: data_dir / "splits" / "vinyals" / f"{s}.txt" for s in ("train", "val", "test")}
    missing = [p for p in files.values() if not p.is_file()]
    if missing:
        fetched = (" dataset.download=true fetches the image zips only (nothing was downloaded): these lists have "
                   "no official download." if download else "")
        raise FileNotFoundError(
            f"dataset.split=vinyals needs the class lists {', '.join(str(p) for p in missing)} (lines "
            f"ALPHABET/characterNN/rotDDD, Vinyals et al. 2016's split, published as train.txt, val.txt and test.txt "
            f"in {VINYALS_SOURCE}).{fetched} Put them in {data_dir / 'splits' / 'vinyals'}, or use "
            "dataset.split=lake, which needs no list"
        )
    return files


def read_split(path: Path, row: dict[str, int], rotations: bool | None) -> Tensor:
    """A class list's ``(character row, quarter turns)`` pairs, ``[classes, 2]``; ``rotations=False`` keeps rot000 only."""
    classes = []
    for n, line in enumerate(path.read_text().split(), 1):
        m = _SPLIT_LINE.match(line)
        if not m or m.group(1) not in row or int(m.group(2)) % 90 or int(m.group(2)) >= 360:
            raise ValueError(f"{path}:{n}: {line!r} is not ALPHABET/characterNN/rotDDD of a character in the zips")
        k = int(m.group(2)) // 90
        if rotations is False and k:
            continue
        classes.append((row[m.group(1)], k))
    if not classes:
        raise ValueError(f"{path} lists no classes")
    return torch.tensor(classes)


def lake_classes(chars: list[str], n_background: int, val_alphabets: int, rotations: bool) -> dict[str, Tensor]:
    """Lake's split: background alphabets for training (the last ``val_alphabets`` of them, sorted
    by name, for validation), evaluation alphabets for test; all four turns as classes when
    ``rotations``."""
    alphabets = sorted({c.split("/")[0] for c in chars[:n_background]})
    held_out = set(alphabets[-val_alphabets:])
    train = [i for i in range(n_background) if chars[i].split("/")[0] not in held_out]
    val = [i for i in range(n_background) if chars[i].split("/")[0] in held_out]
    test = list(range(n_background, len(chars)))
    turns = range(4) if rotations else range(1)
    return {s: torch.tensor([(i, k) for i in rows for k in turns]).view(-1, 2)
            for s, rows in (("train", train), ("val", val), ("test", test))}
