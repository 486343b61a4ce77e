"""``FewShotImages``: N-way K-shot episodes of a natural-image benchmark (mini-ImageNet,
tiered-ImageNet, CIFAR-FS, FC100, CUB, or any image folder), read from the files as distributed,
decoded once into a memory-mapped cache, and sampled by class index."""
from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from metaft.data.episode import Episode
from metaft.data.episodic import EpisodicDataModule, episode_generator
from metaft.data.images.augment import augment
from metaft.data.images.episodes import ClassTable, normalize, read_rows, to_float
from metaft.data.images.readers import LAYOUTS, make_reader
from metaft.data.images.source import SPLITS, ClassLists, SplitNotGiven, class_list
from metaft.data.images.store import ImageStore, build_store, source_key

log = logging.getLogger(__name__)


def _default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/metaft``, else ``~/.cache/metaft`` (as ``paths.cache_dir`` defaults)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "metaft"


class FewShotImages(EpisodicDataModule):
    """Episodes of benchmark ``name``.

    Args:
        name: mini_imagenet | tiered_imagenet | cifar_fs | fc100 | cub | image_folder.
        data_dir: the folder holding the distributed files (read only).
        layout: which distribution of the files (mini_imagenet: pickle | metaoptnet | csv; the
            others have one); None: the benchmark's first.
        class_lists: ``{train, val, test}`` class names (lists or text files) replacing the
            standard split (required for image_folder).
        image_size: side of the square images (84; 32 for the CIFAR benchmarks).
        channels: 3 (RGB) or 1 (grey).
        ways, shots, queries, eval_queries, train_ways: as for Omniglot.
        train_shots: support images per class in meta-training (None: ``shots``; MetaOptNet
            trains mini-ImageNet with 15 and tests with 1 or 5).
        mean, std: per-channel normalisation after scaling to [0, 1] (None: none).
        augment: augment meta-training (and pre-training) images: ``augment_crop`` (pad | resized
            | null), ``augment_pad``, ``augment_flip``, ``augment_jitter`` (see ``augment.py``).
        cache_dir: where the decoded stores are written (None: ``~/.cache/metaft``).
        download: fetch missing archives where an official address exists (CIFAR-100, CUB).
        verify: check published checksums of archives when decoding them.
        common: ``EpisodicDataModule``'s arguments.
    """

    task = "classification"
    class_identity = "benchmark"  # benchmark ``name``'s class lists, or ``class_lists``

    def __init__(self, name: str, data_dir: str, layout: str | None = None, class_lists: ClassLists | None = None,
                 image_size: int = 84, channels: int = 3, ways: int = 5, shots: int = 1, queries: int = 15,
                 eval_queries: int | None = None, train_ways: int | None = None, train_shots: int | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 augment: bool = False, augment_crop: str | None = "pad", augment_pad: int = 8,
                 augment_flip: bool = True, augment_jitter: float = 0.0, cache_dir: str | None = None,
                 download: bool = False, verify: bool = True, **common: int) -> None:
        super().__init__(**common)
        eval_queries = queries if eval_queries is None else eval_queries
        train_ways = ways if train_ways is None else train_ways
        train_shots = shots if train_shots is None else train_shots
        for key, v in (("ways", ways), ("shots", shots), ("queries", queries), ("eval_queries", eval_queries),
                       ("train_ways", train_ways), ("train_shots", train_shots), ("image_size", image_size)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"dataset.{key} must be a positive integer, got {v!r}")
        if channels not in (1, 3):
            raise ValueError(f"dataset.channels must be 1 (grey) or 3 (RGB), got {channels!r}")
        if (mean is None) != (std is None) or (mean is not None and not (len(mean) == len(std) == channels)):
            raise ValueError(f"dataset.mean and dataset.std must both be null or both list {channels} numbers "
                             f"(one per channel), got {mean} and {std}")
        if mean is not None and min(std) <= 0:
            raise ValueError(f"dataset.std must be positive, got {std}")
        if augment_crop not in (None, "pad", "resized"):
            raise ValueError(f"dataset.augment_crop must be pad, resized or null, got {augment_crop!r}")
        self.name, self.image_size, self.channels = name, image_size, channels
        self.ways, self.shots, self.queries, self.eval_queries, self.train_ways = ways, shots, queries, eval_queries, train_ways
        self.train_shots = train_shots
        self.mean = None if mean is None else [float(m) for m in mean]
        self.std = None if std is None else [float(s) for s in std]
        self.augment_options = ({"crop": augment_crop, "pad": int(augment_pad), "flip": bool(augment_flip),
                                 "jitter": float(augment_jitter)} if augment else None)
        self.data_dir = Path(data_dir).expanduser()
        self.cache_dir = _default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()
        lists = None if class_lists is None else {k: class_lists[k] for k in class_lists}
        # The classes by image source, checked disjoint across splits before any file is read
        # (imported here: the identities import this package's class lists).
        from metaft.data.identity import image_classes

        self.identity = image_classes(name, lists)
        self.reader = make_reader(name, self.data_dir, layout, lists, bool(download), bool(verify))
        self.layout, self.class_lists = layout or LAYOUTS[name][0], lists
        self.sources: dict[str, list[Path]] = {}
        for s in SPLITS:  # missing files fail here, before any run
            try:
                self.sources[s] = self.reader.files(s)
            except SplitNotGiven:
                pass  # refused if that split is used (store())
        self._stores: dict[str, ImageStore] = {}
        self._tables: dict[str, ClassTable] = {}
        self._fixed_rows: dict[str, list[Tensor]] = {}

    def __getstate__(self) -> dict:
        # Spawned data-parallel processes get a pickled copy: without this, numpy would pickle the
        # memory-mapped images as a full in-memory copy (GBs). Each process reopens the cache.
        state = self.__dict__.copy()
        state["_stores"], state["_tables"] = {}, {}
        return state

    # ----------------------------------------------------------------------------- the data
    def setup(self, stage: str) -> None:
        """Open (or decode) the splits a stage uses before its first step, so a split that cannot
        fill the episodes fails now; evaluation alone never decodes the training split."""
        for split in {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage, ()):
            self.store(split)

    def store(self, split: str) -> ImageStore:
        """``split``'s decoded images (decoded on first use, then read from the cache)."""
        if split not in SPLITS:
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        if split not in self._stores:
            if split not in self.sources:
                self.reader.files(split)  # raises, saying which setting to give
            # Keyed by the files and everything that changes what is decoded, the resolved class
            # list included (a hash): an edited split file or override reorders or picks other
            # classes, so it gets its own store; the store is also checked to hold that list.
            classes = class_list(self.name, split, self.class_lists)
            digest = hashlib.sha256("\n".join(classes).encode()).hexdigest()[:16]
            parts = (self.name, self.layout, split, self.image_size, digest)
            key = f"{self.name}_{split}_{self.image_size}px_{source_key(self.sources[split], *parts)}"
            log.info("opening the %s %s images (decoded once into %s)", self.name, split, self.cache_dir)
            store = build_store(self.cache_dir, key, self.image_size, lambda: self.reader.read(split, self.image_size),
                                class_list=classes)
            self._check(split, store)
            self._stores[split] = store
            self._tables[split] = ClassTable(store)
        return self._stores[split]

    def table(self, split: str) -> ClassTable:
        self.store(split)
        return self._tables[split]

    def _check(self, split: str, store: ImageStore) -> None:
        counts = [len(r) for r in store.rows_by_class()]
        problems = self._shape_lines(split, dict(zip(store.classes, counts)))
        if problems:  # the first: the others were reported before the run (shape_problems)
            raise ValueError(problems[0])

    def _shape_lines(self, split: str, counts: dict[str, int] | int) -> list[str]:
        """What keeps ``split`` from filling its episodes: too few classes for its ways, a class
        with fewer images than shots + queries. ``counts``: images per class name, or only the
        number of classes where the images are not counted without decoding them."""
        problems = []
        n_classes = counts if isinstance(counts, int) else len(counts)
        ways = self.split_ways(split)
        if ways > n_classes:
            key = "train_ways" if split == "train" and ways != self.ways else "ways"
            problems.append(f"dataset.{key}={ways} but the {split} split of {self.name} has only {n_classes} classes; "
                            f"lower dataset.{key} (or give the split more classes)")
        if isinstance(counts, dict) and counts:
            fewest = min(counts, key=counts.get)
            shots = "train_shots" if split == "train" and self.train_shots != self.shots else "shots"
            queries = "queries" if split == "train" or self.eval_queries == self.queries else "eval_queries"
            need = self.split_shots(split) + (self.queries if split == "train" else self.eval_queries)
            if need > counts[fewest]:
                problems.append(f"dataset.{shots} + {queries} = {need} but class {fewest!r} of the {split} split of "
                                f"{self.name} has only {counts[fewest]} images; lower dataset.{shots} or "
                                f"dataset.{queries}")
        return problems

    def shape_problems(self, splits: Sequence[str]) -> list[str]:
        """Every shape problem of ``splits``' episodes found without decoding an image, one line each,
        so that all are reported before the run starts: each split's classes against its ways, and
        where the reader counts files (image folders), each class's images against shots + queries."""
        problems = []
        for split in splits:
            try:
                counts = self.reader.class_counts(split) if hasattr(self.reader, "class_counts") else \
                    len(class_list(self.name, split, self.class_lists))
            except (ValueError, FileNotFoundError) as e:  # a split not given, a missing list or folder
                problems.append(str(e))
                continue
            problems += self._shape_lines(split, counts)
        return problems

    def pool_images(self, split: str) -> int:
        """Distinct images ``split``'s episodes draw from (a small pool labels their intervals)."""
        return len(self.store(split).labels)

    def images_per_episode(self, split: str) -> int:
        return self.split_ways(split) * (self.split_shots(split) + (self.queries if split == "train" else self.eval_queries))

    def num_classes(self, split: str) -> int:
        return len(self.store(split).classes)

    def class_names(self, split: str) -> list[str]:
        return list(self.store(split).classes)

    def split_ways(self, split: str) -> int:
        return self.train_ways if split == "train" else self.ways

    def split_shots(self, split: str) -> int:
        return self.train_shots if split == "train" else self.shots

    def support_size(self, split: str) -> int:
        return self.split_ways(split) * self.split_shots(split)

    def images(self, split: str, rows: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Float images ``rows.shape + [C, S, S]`` of ``split``'s store rows, normalised; augmented
        (with ``generator``) for the training split when ``augment`` is on."""
        x = to_float(read_rows(self.store(split), rows), self.channels)
        if self.augment_options and split == "train" and generator is not None:
            x = augment(x, generator, **self.augment_options)
        return normalize(x, self.mean, self.std)

    # ------------------------------------------------------------------------- sampling
    def draw(self, split: str, n: int, generator: torch.Generator) -> Tensor:
        """The random part of ``sample``: store rows ``[n, ways, shots + queries]``."""
        q = self.queries if split == "train" else self.eval_queries
        return self.table(split).draw(n, self.split_ways(split), self.split_shots(split) + q, generator)

    def sample(self, split: str, n: int, generator: torch.Generator) -> Episode:
        return self.episode(split, self.draw(split, n, generator), generator)

    def episode(self, split: str, rows: Tensor, generator: torch.Generator | None = None) -> Episode:
        """The episodes of drawn ``rows`` (``generator``: for training-image augmentation)."""
        x = self.images(split, rows, generator)  # [n, ways, s+q, C, S, S]
        return Episode.from_blocks(x, self.split_shots(split))

    def labelled_batch(self, split: str, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``n`` images drawn uniformly (with replacement) from ``split`` and their class indices."""
        store = self.store(split)
        rows = torch.randint(len(store.labels), (n,), generator=generator)
        y = torch.from_numpy(store.labels)[rows]
        return self.images(split, rows, generator), y

    # ----------------------------------------------------------- evaluation episodes, lazily
    # The base class keeps every fixed evaluation episode as images: 1,000 5-way 1-shot 15-query
    # test episodes at 84 px are 6.8 GB of float32. Here only their rows are kept (the draws are
    # the same as ``sample``'s: no augmentation outside training) and each batch is read when used.
    def fixed_rows(self, split: str) -> list[Tensor]:
        if split not in self._fixed_rows:
            # Episode i from its own generator (as the base class): the same whatever the batch
            # size, the episode count or the number of ranks.
            total, size = (self.val_episodes if split == "val" else self.test_episodes), self.eval_batch_size
            self._fixed_rows[split] = [
                torch.cat([self.draw(split, 1, episode_generator(self.seed, split, i))
                           for i in range(start, min(start + size, total))])
                for start in range(0, total, size)
            ]
        return self._fixed_rows[split]

    def fixed_episodes(self, split: str) -> LazyEpisodes:  # type: ignore[override]
        return LazyEpisodes(self, split, self.fixed_rows(split))

    def _eval_loader(self, split: str) -> DataLoader:
        rank, world = self.rank_and_world()
        rows = self.fixed_rows(split)
        if world > 1:  # rank r evaluates tasks r, r+world, ... of every batch (see the base class)
            rows = [r[rank::world] for r in rows if len(r[rank::world])]
            if not rows:
                raise ValueError(f"dataset.{split}_episodes is smaller than the {world} devices: every rank needs at "
                                 f"least one episode; raise dataset.{split}_episodes or lower trainer.devices")
        return DataLoader(LazyEpisodes(self, split, rows), batch_size=None, shuffle=False, collate_fn=_as_is)


def _as_is(batch: Episode) -> Episode:
    return batch


class LazyEpisodes(Dataset):
    """Evaluation batches as drawn rows, read into episodes on access."""

    def __init__(self, dm: FewShotImages, split: str, rows: list[Tensor]) -> None:
        self.dm, self.split, self.rows = dm, split, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Episode:
        if not 0 <= i < len(self.rows):
            raise IndexError(i)
        return self.dm.episode(self.split, self.rows[i])
