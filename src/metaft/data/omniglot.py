"""Omniglot few-shot classification (Lake, Salakhutdinov & Tenenbaum 2015) from the official zips.

Every PNG is decoded once, straight from ``images_background.zip`` / ``images_evaluation.zip``,
resized and stored as one uint8 tensor file per (zip, image size) in a cache directory. After
that a run loads ~25 MB and samples every episode with tensor indexing in memory.

Image convention: ink is 1 and background 0 (the PNGs are black ink on white; inverting makes
the zero padding of convolutions match the background, as the MAML and ProtoNet loaders do).

Resize: exact area averaging, each output pixel the mean of the input square it covers (input
pixels weighted by their overlap). Downscaling 105 -> 28 is a factor of 3.75; area averaging keeps
every thin stroke as a grey level and cannot ring (values stay in [0, 1]), and, unlike Pillow's
BOX (whole pixels chosen by their centres) or NEAREST (what Pillow silently uses for one-bit
images, hence for loaders that resize the PNG as opened), it is exactly symmetric, so rotating
a cached image is the same as rotating the 105x105 original and then resizing.

Rotations: a class ``ALPHABET/characterNN/rotDDD`` of the Vinyals split is the character turned
DDD degrees counter-clockwise, the convention of the split's authors (their loaders call
``PIL.Image.rotate(DDD)``, which turns counter-clockwise); here ``torch.rot90(img, DDD // 90)``
on the cached image, which is the same turn (checked against Pillow in the tests).

Sampling an episode is one ``index_select`` of (character, drawer) rows from the in-memory
tensor plus a per-class choice among the four rotations; 32 tasks of 5-way 1-shot 15-query take
7-11 ms on one thread of a busy 2-core machine. Decoding both zips takes ~20 s there; loading the
cache ~0.2 s.
"""
from __future__ import annotations

import functools
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

from metaft.data.datamodule import EpisodicDataModule
from metaft.data.episode import Episode

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
_SPLIT_LINE = re.compile(r"^([^/]+/character\d+)/rot(\d{3})$")


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/metaft``, else ``~/.cache/metaft`` (never inside the read-only data)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "metaft"


SIDE = 105  # the side of every Omniglot PNG


@functools.lru_cache(maxsize=8)
def area_weights(n_in: int, n_out: int) -> Tensor:
    """``[n_out, n_in]``: the overlap of input pixel p with output pixel i, rows summing to 1."""
    edges = torch.arange(n_out + 1, dtype=torch.float64) * (n_in / n_out)
    p = torch.arange(n_in, dtype=torch.float64)
    overlap = (torch.minimum(edges[1:, None], p + 1) - torch.maximum(edges[:-1, None], p)).clamp_min(0)
    return (overlap / overlap.sum(1, keepdim=True)).float()


# Koch et al. 2015's distortions of Omniglot training images: rotation up to 10 degrees, shear up
# to 0.3, scale 0.8-1.2 per axis, translation up to 2 of 105 pixels (as a fraction of the side).
AUGMENT_RANGES = {"rotation_deg": 10.0, "shear": 0.3, "scale": 0.2, "shift": 2 / 105}


def random_affine(n: int, generator: torch.Generator) -> Tensor:
    """``n`` random affine maps ``[n, 2, 3]`` in ``affine_grid``'s normalized coordinates, each
    parameter uniform in ``AUGMENT_RANGES`` (symmetric ranges: the map or its inverse, alike)."""
    r = AUGMENT_RANGES
    u = torch.rand(n, 7, generator=generator) * 2 - 1
    angle = u[:, 0] * (r["rotation_deg"] * torch.pi / 180)
    cos, sin = angle.cos(), angle.sin()
    rotation = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    shear = torch.eye(2).repeat(n, 1, 1)
    shear[:, 0, 1], shear[:, 1, 0] = u[:, 1] * r["shear"], u[:, 2] * r["shear"]
    scale = torch.diag_embed(1 + u[:, 3:5] * r["scale"])
    shift = u[:, 5:7] * (2 * r["shift"])  # normalized coordinates span 2 per side
    return torch.cat([rotation @ shear @ scale, shift.unsqueeze(-1)], -1)


def affine_distort(x: Tensor, theta: Tensor) -> Tensor:
    """Images ``[..., 1, H, W]`` resampled (bilinear) through ``theta`` ``[N, 2, 3]``, one map per
    image (N = their number); outside the image is background (0, as ink is 1)."""
    flat = x.reshape(-1, *x.shape[-3:])
    grid = torch.nn.functional.affine_grid(theta.to(flat.dtype), list(flat.shape), align_corners=False)
    out = torch.nn.functional.grid_sample(flat, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.view(x.shape)


def area_resize(ink: Tensor, image_size: int) -> Tensor:
    """uint8 ``[..., n, n]`` -> uint8 ``[..., image_size, image_size]`` by exact area averaging.
    Callers pass many images at once: one small matmul per image costs more in dispatch (and in
    thread hand-offs on a busy machine) than the arithmetic."""
    w = area_weights(ink.shape[-1], image_size)
    # float32 is exact enough: rounding errors ~1e-4 against levels that never fall within 0.03
    # of a .5 tie for one-bit input at the usual sizes.
    return (w @ ink.float() @ w.T).round_().clamp_(0, 255).to(torch.uint8)


def ink_image(img: Image.Image, ink_is_dark: bool | None = True) -> Tensor:
    """A square 105x105 Omniglot image -> uint8 ``[105, 105]`` with ink 255 and background 0.

    ``ink_is_dark``: the polarity of ``img``; ``None`` decides per image from the majority
    (background) colour, for image sets whose polarity is not known.
    """
    gray = img.convert("L")
    if gray.size != (SIDE, SIDE):
        raise ValueError(f"Omniglot images are {SIDE}x{SIDE}, got {gray.width}x{gray.height}")
    x = torch.frombuffer(bytearray(gray.tobytes()), dtype=torch.uint8).view(SIDE, SIDE)
    if ink_is_dark is None:
        ink_is_dark = bool((x >= 128).sum() * 2 > x.numel())  # mostly light: light is background
    return 255 - x if ink_is_dark else x


def preprocess(img: Image.Image, image_size: int, ink_is_dark: bool | None = True) -> Tensor:
    """One image, as the cache stores it: ``area_resize(ink_image(img))``, uint8 ``[S, S]``."""
    return area_resize(ink_image(img, ink_is_dark), image_size)


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


class OmniglotDataModule(EpisodicDataModule):
    """N-way K-shot Omniglot episodes.

    Args:
        data_dir: directory holding ``images_background.zip``, ``images_evaluation.zip`` and, for
            the Vinyals split, ``splits/vinyals/{train,val,test}.txt``.
        ways, shots: classes per task and support images per class.
        queries: query images per class in meta-training; ``eval_queries`` at validation and
            test (``None``: the same as ``queries``).
        train_ways: classes per meta-training episode (``None``: ``ways``). Prototypical Networks
            train with more ways than they test (60 for 5- and 20-way Omniglot): harder episodes,
            more classes per step.
        within_alphabet: draw every episode's classes from one alphabet (picked with probability
            proportional to its classes), as in Lake's one-shot runs, instead of from the whole
            split. Look-alike characters make these episodes harder; training on them teaches the
            fine distinctions the runs test.
        split: ``vinyals`` (the class lists of Vinyals et al. 2016: characters of all 50
            alphabets, each rotation a class) or ``lake`` (background alphabets for training,
            the last ``lake_val_alphabets`` of them, in sorted order, held out for validation;
            evaluation alphabets for test).
        rotations: ``None`` keeps the split's own choice (vinyals: the four listed rotations;
            lake: none). ``True``/``False`` turns the four rotations-as-classes on/off.
        image_size: side of the square images (area-averaged from 105).
        cache_dir: where the decoded tensors are kept (``None``: ``default_cache_dir()``).
        download: fetch missing zips (official URLs) into ``data_dir``.
        augment: distort every meta-training image by a random affine map (``AUGMENT_RANGES``);
            validation and test images stay as they are. Drawn after the classes and drawers,
            so the episodes' classes and drawers are those of ``augment=false``.
        common: ``EpisodicDataModule``'s arguments (meta_batch_size, val_episodes, ...).
    """

    task = "classification"

    def __init__(
        self,
        data_dir: str,
        ways: int = 5,
        shots: int = 1,
        queries: int = 15,
        eval_queries: int | None = None,
        train_ways: int | None = None,
        within_alphabet: bool = False,
        split: str = "vinyals",
        rotations: bool | None = None,
        lake_val_alphabets: int = 5,
        image_size: int = 28,
        cache_dir: str | None = None,
        download: bool = False,
        augment: bool = False,
        **common: int,
    ) -> None:
        super().__init__(**common)
        eval_queries = queries if eval_queries is None else eval_queries
        train_ways = ways if train_ways is None else train_ways
        for name, v in (("ways", ways), ("shots", shots), ("queries", queries), ("eval_queries", eval_queries),
                        ("train_ways", train_ways), ("image_size", image_size)):
            if v <= 0:
                raise ValueError(f"dataset.{name} must be > 0, got {v}")
        if shots + max(queries, eval_queries) > DRAWERS:
            raise ValueError(
                f"dataset.shots + dataset.queries/eval_queries = {shots} + {max(queries, eval_queries)} > {DRAWERS}: "
                f"Omniglot has only {DRAWERS} drawers per character; lower shots or queries"
            )
        if split not in ("vinyals", "lake"):
            raise ValueError(f"dataset.split must be 'vinyals' or 'lake', got {split!r}")
        if split == "lake" and not 0 < lake_val_alphabets < 30:
            raise ValueError(f"dataset.lake_val_alphabets must be in 1..29 (of the 30 background alphabets), "
                             f"got {lake_val_alphabets}")
        self.ways, self.shots, self.queries, self.eval_queries = ways, shots, queries, eval_queries
        self.train_ways, self.within_alphabet = train_ways, within_alphabet
        self.split, self.image_size = split, image_size
        self.augment = bool(augment)
        self.data_dir = Path(data_dir).expanduser()
        cache = default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()

        zips = self._zip_paths(download)
        split_files = self._split_files() if split == "vinyals" else {}
        chars: list[str] = []
        parts = []
        for name in SETS:
            c, imgs = load_images(zips[name], image_size, cache)
            chars += c
            parts.append(imgs)
        n_background = len(parts[0])
        # All characters, uint8 [characters, drawers, H, W]; sampling indexes into this alone.
        self.images = torch.cat(parts)
        self.chars = chars
        row = {c: i for i, c in enumerate(chars)}
        if split == "vinyals":
            self.classes = {s: self._read_split(f, row, rotations) for s, f in split_files.items()}
        else:
            alphabets = sorted({c.split("/")[0] for c in chars[:n_background]})
            val_alphabets = set(alphabets[-lake_val_alphabets:])
            train = [i for i in range(n_background) if chars[i].split("/")[0] not in val_alphabets]
            val = [i for i in range(n_background) if chars[i].split("/")[0] in val_alphabets]
            test = list(range(n_background, len(chars)))
            turns = range(4) if rotations else range(1)
            self.classes = {s: torch.tensor([(i, k) for i in rows for k in turns]).view(-1, 2)
                            for s, rows in (("train", train), ("val", val), ("test", test))}
        alphabet_id = {a: i for i, a in enumerate(sorted({c.split("/")[0] for c in chars}))}
        char_alphabet = torch.tensor([alphabet_id[c.split("/")[0]] for c in chars])
        # Per split, each class's alphabet (for within_alphabet episodes), and a check that every
        # split can fill its episodes: enough classes, or enough in at least one alphabet.
        self.alphabet = {s: char_alphabet[cls[:, 0]] for s, cls in self.classes.items()}
        for s, cls in self.classes.items():
            n = self.split_ways(s)
            most = int(self.alphabet[s].bincount().max()) if within_alphabet else len(cls)
            if n > most:
                key = "train_ways" if s == "train" and n != ways else "ways"
                where = f"the {s} split of dataset.split={split}"
                raise ValueError(
                    f"dataset.{key}={n} but {'the largest alphabet of ' if within_alphabet else ''}{where} has only "
                    f"{most} classes; lower dataset.{key}" + (" or set dataset.within_alphabet=false" if within_alphabet else "")
                )

    # ---------------------------------------------------------------------------- files
    def _zip_paths(self, download: bool) -> dict[str, Path]:
        paths = {name: self.data_dir / f"{name}.zip" for name in SETS}
        for name, p in paths.items():
            if p.is_file():
                continue
            if download:
                download_zip(name, self.data_dir)
                continue
            where = "does not exist" if not self.data_dir.is_dir() else f"has no {p.name}"
            if not self.data_dir.is_absolute():  # relative paths are from the directory train.py runs in
                where += f" (here: {self.data_dir.resolve()})"
            raise FileNotFoundError(
                f"dataset.data_dir={self.data_dir} {where}. Point dataset.data_dir (or paths.data_dir) at the "
                f"Omniglot directory, or set dataset.download=true to fetch the official zips "
                f"({OFFICIAL_URL.format(name=SETS[0])} and {OFFICIAL_URL.format(name=SETS[1])}) into it."
            )
        return paths

    def _split_files(self) -> dict[str, Path]:
        files = {s: self.data_dir / "splits" / "vinyals" / f"{s}.txt" for s in ("train", "val", "test")}
        for p in files.values():
            if not p.is_file():
                raise FileNotFoundError(
                    f"dataset.split=vinyals needs the class list {p} (lines ALPHABET/characterNN/rotDDD, from "
                    "Vinyals et al. 2016 as published with jakesnell/prototypical-networks); put it there or use "
                    "dataset.split=lake, which needs no list"
                )
        return files

    @staticmethod
    def _read_split(path: Path, row: dict[str, int], rotations: bool | None) -> Tensor:
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

    # ------------------------------------------------------------------------- sampling
    def _classes(self, split: str) -> Tensor:
        if split not in self.classes:
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        return self.classes[split]

    def num_classes(self, split: str) -> int:
        """How many classes (character x rotation) ``split`` has."""
        return len(self._classes(split))

    def class_names(self, split: str) -> list[str]:
        """``ALPHABET/characterNN/rotDDD`` of every class of ``split``, by global class index."""
        return [f"{self.chars[i]}/rot{90 * k:03d}" for i, k in self._classes(split).tolist()]

    def gather(self, classes: Tensor, drawers: Tensor) -> Tensor:
        """Float images in [0, 1] of split-table rows ``classes`` (``S + [2]``: character, quarter
        turns) and drawers (``S + [m]``): ``S + [m, 1, H, W]``."""
        char, turn = classes.unbind(-1)
        rows = char.unsqueeze(-1) * DRAWERS + drawers  # S + [m]
        size = self.image_size
        x = self.images.view(-1, size, size).index_select(0, rows.flatten()).view(-1, rows.shape[-1], size, size)
        # All four turns of the whole (small, uint8) batch, then each class picks its own: a fixed
        # four rot90 calls and one block gather instead of a loop over tasks or classes.
        turns = torch.stack([torch.rot90(x, k, dims=(-2, -1)) for k in range(4)])
        x = turns[turn.flatten(), torch.arange(len(x))].view(*rows.shape, size, size)
        return x.unsqueeze(-3).float().div_(255)

    def split_ways(self, split: str) -> int:
        """Classes per episode of ``split``: ``train_ways`` in meta-training, ``ways`` otherwise."""
        return self.train_ways if split == "train" else self.ways

    def draw(self, split: str, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """The random part of ``sample``: per task ``ways`` distinct classes (indices into the
        split's class list, ``[n, ways]``) and ``shots + queries`` distinct drawers per class
        (``[n, ways, shots + queries]``)."""
        table, ways = self._classes(split), self.split_ways(split)
        q = self.queries if split == "train" else self.eval_queries
        # The top ``ways`` of i.i.d. uniforms: a uniformly random ordered subset, O(classes).
        keys = torch.rand(n, len(table), generator=generator)
        if self.within_alphabet:
            # The alphabet of a uniformly drawn class (of one with enough siblings), then only its
            # classes compete for the top ``ways``.
            alpha = self.alphabet[split]
            sizes = alpha.bincount()[alpha]
            lead = torch.rand(n, len(table), generator=generator).masked_fill_(sizes < ways, -1).argmax(-1)
            keys.masked_fill_(alpha != alpha[lead].unsqueeze(-1), -1.0)
        picks = keys.topk(ways, dim=-1).indices
        drawers = torch.rand(n, ways, DRAWERS, generator=generator).argsort(-1)[..., : self.shots + q]
        return picks, drawers

    def sample(self, split: str, n: int, generator: torch.Generator) -> Episode:
        picks, drawers = self.draw(split, n, generator)
        x = self.gather(self._classes(split)[picks], drawers)  # [n, ways, shots+q, 1, H, W]
        if self.augment and split == "train":  # after the draw: the same classes and drawers as without
            x = affine_distort(x, random_affine(x.shape[:-3].numel(), generator))
        s, ways = self.shots, x.shape[1]
        q = x.shape[2] - s
        labels = torch.arange(ways)
        return Episode(
            x[:, :, :s].reshape(n, ways * s, *x.shape[3:]),
            labels.repeat_interleave(s).expand(n, -1).contiguous(),
            x[:, :, s:].reshape(n, ways * q, *x.shape[3:]),
            labels.repeat_interleave(q).expand(n, -1).contiguous(),
        )

    def labelled_batch(self, split: str, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``n`` images drawn uniformly (with replacement) from ``split``: ``[n, 1, H, W]`` in [0, 1]
        and their global class indices in ``[0, num_classes(split))``."""
        table = self._classes(split)
        y = torch.randint(len(table), (n,), generator=generator)
        drawer = torch.randint(DRAWERS, (n, 1), generator=generator)
        x = self.gather(table[y], drawer)[:, 0]
        if self.augment and split == "train":
            x = affine_distort(x, random_affine(n, generator))
        return x, y
