"""Miniatures of the image benchmarks in exactly their distributed layouts (pickle keys and dtypes,
CSV columns, archive member paths), a few classes of a few images each.

Every image carries its identity so tests can check what an episode holds: in lossless layouts
pixel (0, 0) is (class number, image number, 7) and the rest is noise; in JPEG layouts the
image is one flat colour ``colour(class number)``, which JPEG keeps within a few levels.
"""
from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from metaft.data.images.source import packaged_classes

SPLITS = ("train", "val", "test")


def marks(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(class number, image number) from pixel (0, 0) of images ``[..., 3, S, S]`` in [0, 1]."""
    px = (x[..., :, 0, 0] * 255).round().long()
    assert (px[..., 2] == 7).all(), "a mark was lost: the image is not one the miniature wrote"
    return px[..., 0], px[..., 1]


def marked(rng: np.random.Generator, cls: int, n: int, size: int = 84) -> np.ndarray:
    """``n`` noise images ``[n, size, size, 3]`` whose pixel (0, 0) is (cls, index, 7)."""
    x = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    x[:, 0, 0] = np.stack([np.full(n, cls), np.arange(n), np.full(n, 7)], -1)
    return x


def colour(cls: int) -> tuple[int, int, int]:
    return (40 + 9 * cls % 200, 250 - 7 * cls % 200, 30 + 50 * (cls % 4))


def jpeg(cls: int, size: tuple[int, int] = (40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour(cls)).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def split_classes(name: str, per_split: tuple[int, int, int] = (4, 3, 3)) -> dict[str, list[str]]:
    """The first few real class names of each standard split."""
    return {s: packaged_classes(name, s)[:k] for s, k in zip(SPLITS, per_split)}


def mini_pickle(root: Path, classes: dict[str, list[str]], per_class: int = 8, seed: int = 0) -> None:
    """``mini-imagenet-cache-{split}.pkl``: image_data uint8 [N, 84, 84, 3], class_dict {wnid: [rows]}."""
    rng = np.random.default_rng(seed)
    for s, names in classes.items():
        images = np.concatenate([marked(rng, i, per_class) for i in range(len(names))])
        perm = rng.permutation(len(images))  # class rows interleaved, as the real file's need not be in order
        inverse = np.argsort(perm)
        class_dict = {c: sorted(inverse[i * per_class:(i + 1) * per_class].tolist()) for i, c in enumerate(names)}
        with open(root / f"mini-imagenet-cache-{s}.pkl", "wb") as f:
            pickle.dump({"image_data": images[perm], "class_dict": class_dict}, f, protocol=4)


def mini_metaoptnet(root: Path, classes: dict[str, list[str]], per_class: int = 8, seed: int = 0) -> None:
    """``miniImageNet_category_split_{train_phase_train,val,test}.pickle``: data, labels, catname2label
    (global labels, as the real files: val and test continue after train's)."""
    rng = np.random.default_rng(seed)
    offset = 0
    for s, names in classes.items():
        images = np.concatenate([marked(rng, i, per_class) for i in range(len(names))])
        labels = np.repeat(np.arange(len(names)) + offset, per_class)
        perm = rng.permutation(len(images))
        part = {"train": "train_phase_train"}.get(s, s)
        with open(root / f"miniImageNet_category_split_{part}.pickle", "wb") as f:
            pickle.dump({"data": images[perm], "labels": labels[perm].tolist(),
                         "catname2label": {c: offset + i for i, c in enumerate(names)}}, f, protocol=2)
        offset += len(names)


def mini_csv(root: Path, classes: dict[str, list[str]], per_class: int = 8) -> None:
    """``{split}.csv`` (filename,label) and ``images/<wnid><8 digits>.jpg`` of varying sizes."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    for s, names in classes.items():
        lines = ["filename,label"]
        for i, c in enumerate(names):
            for k in range(per_class):
                name = f"{c}{k + 1:08d}.jpg"
                (root / "images" / name).write_bytes(jpeg(i, (50 + k, 40)))
                lines.append(f"{name},{c}")
        (root / f"{s}.csv").write_text("\n".join(lines) + "\n")


def tiered(root: Path, classes: dict[str, list[str]], per_class: int = 6, seed: int = 0) -> None:
    """``{split}_images_png.pkl`` (PNG byte arrays) and ``{split}_labels.pkl`` (label_specific & co)."""
    rng = np.random.default_rng(seed)
    for s, names in classes.items():
        images = np.concatenate([marked(rng, i, per_class) for i in range(len(names))])
        labels = np.repeat(np.arange(len(names)), per_class)
        perm = rng.permutation(len(images))
        pngs = [np.frombuffer(png(images[r]), dtype=np.uint8) for r in perm]
        with open(root / f"{s}_images_png.pkl", "wb") as f:
            pickle.dump(pngs, f, protocol=2)
        meta = {"label_specific": labels[perm], "label_general": labels[perm] // 2,
                "label_specific_str": list(names), "label_general_str": [f"cat{i}" for i in range(len(names))]}
        with open(root / f"{s}_labels.pkl", "wb") as f:
            pickle.dump(meta, f, protocol=2)


def cifar100(root: Path, train_per_class: int = 4, test_per_class: int = 2, seed: int = 0) -> Path:
    """``cifar-100-python.tar.gz`` with cifar-100-python/{train,test,meta}: all 100 real fine names
    (the CIFAR-FS lists) and 20 superclass names (the FC100 lists); fine class i is in superclass
    i // 5 of the sorted superclass names (a miniature's mapping, not CIFAR's)."""
    rng = np.random.default_rng(seed)
    fine = sorted(c for s in SPLITS for c in packaged_classes("cifar_fs", s))
    coarse = sorted(c for s in SPLITS for c in packaged_classes("fc100", s))
    assert len(fine) == 100 and len(coarse) == 20
    members = {}
    for part, n in (("train", train_per_class), ("test", test_per_class)):
        imgs = np.concatenate([marked(rng, i, n, 32) for i in range(100)])
        labels = np.repeat(np.arange(100), n)
        perm = rng.permutation(len(imgs))
        data = imgs[perm].transpose(0, 3, 1, 2).reshape(len(imgs), 3072)  # channel-major rows
        members[part] = {"filenames": [f"img{i}.png" for i in range(len(imgs))], "batch_label": part,
                         "fine_labels": labels[perm].tolist(), "coarse_labels": (labels[perm] // 5).tolist(),
                         "data": data}
    members["meta"] = {"fine_label_names": fine, "coarse_label_names": coarse}
    path = root / "cifar-100-python.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, obj in members.items():
            raw = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


def cub(root: Path, classes: list[str], per_class: int = 6) -> Path:
    """``CUB_200_2011.tgz`` with CUB_200_2011/images/<class>/<name>_<k>.jpg, images.txt, classes.txt."""
    path = root / "CUB_200_2011.tgz"
    lines, class_lines = [], []
    with tarfile.open(path, "w:gz") as tar:
        def add(name: str, raw: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))

        for i, c in enumerate(sorted(classes)):
            class_lines.append(f"{i + 1} {c}")
            for k in range(per_class):
                rel = f"{c}/{c.split('.', 1)[1]}_{k:04d}_{1000 + k}.jpg"
                add(f"CUB_200_2011/images/{rel}", jpeg(classes.index(c), (60 + k, 45)))
                lines.append(f"{len(lines) + 1} {rel}")
        add("CUB_200_2011/images.txt", ("\n".join(lines) + "\n").encode())
        add("CUB_200_2011/classes.txt", ("\n".join(class_lines) + "\n").encode())
    return path


def image_folder(root: Path, classes: list[str], per_class: int = 6, size: int = 28) -> None:
    """``root/<class>/<k>.png``: flat colours."""
    for i, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            Image.new("RGB", (size + k, size), colour(i)).save(root / c / f"{k}.png")


MINI = split_classes("mini_imagenet")
RAW = {"mean": None, "std": None}  # pixel values as stored, /255: the marks stay readable
