"""N-way K-shot Omniglot episodes (Lake, Salakhutdinov & Tenenbaum 2015).

Rotations: a class ``ALPHABET/characterNN/rotDDD`` of the Vinyals split is the character turned
DDD degrees counter-clockwise, the convention of the split's authors (their loaders call
``PIL.Image.rotate(DDD)``, which turns counter-clockwise); here ``torch.rot90(img, DDD // 90)``
on the cached image, which is the same turn (checked against Pillow in the tests).

Sampling an episode is one ``index_select`` of (character, drawer) rows from the in-memory
tensor plus a per-class choice among the four rotations; both zips are decoded once into a cache
(sampling, decoding and loading times: docs/results.md).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from metaft.data.episode import Episode
from metaft.data.episodic import EpisodicDataModule
from metaft.data.omniglot.classes import OmniglotClasses
from metaft.data.omniglot.images import affine_distort, random_affine
from metaft.data.omniglot.store import DRAWERS

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
        train_shots: support images per class in meta-training (``None``: ``shots``); Reptile's
            paper trains with 10 for its 1-shot evaluation.
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
    channels = 1  # grey images: a checkpoint's stored config says its inputs through this class
    class_identity = "omniglot"  # the characters of ``split``'s scheme, from the class lists alone

    def __init__(
        self,
        data_dir: str,
        ways: int = 5,
        shots: int = 1,
        queries: int = 15,
        eval_queries: int | None = None,
        train_ways: int | None = None,
        train_shots: int | None = None,
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
        train_shots = shots if train_shots is None else train_shots
        for name, v in (("ways", ways), ("shots", shots), ("queries", queries), ("eval_queries", eval_queries),
                        ("train_ways", train_ways), ("train_shots", train_shots), ("image_size", image_size)):
            if v <= 0:
                raise ValueError(f"dataset.{name} must be > 0, got {v}")
        for shot_key, s, query_key, q in (("train_shots" if train_shots != shots else "shots", train_shots, "queries", queries),
                                          ("shots", shots, "eval_queries" if eval_queries != queries else "queries", eval_queries)):
            if s + q > DRAWERS:
                raise ValueError(f"dataset.{shot_key} + dataset.{query_key} = {s} + {q} > {DRAWERS}: Omniglot has only "
                                 f"{DRAWERS} drawers per character; lower dataset.{shot_key} or dataset.{query_key}")
        if split not in ("vinyals", "lake"):
            raise ValueError(f"dataset.split must be 'vinyals' or 'lake', got {split!r}")
        if split == "lake" and not 0 < lake_val_alphabets < 30:
            raise ValueError(f"dataset.lake_val_alphabets must be in 1..29 (of the 30 background alphabets), "
                             f"got {lake_val_alphabets}")
        self.ways, self.shots, self.queries, self.eval_queries = ways, shots, queries, eval_queries
        self.train_ways, self.train_shots, self.within_alphabet = train_ways, train_shots, within_alphabet
        self.split, self.image_size = split, image_size
        self.augment = bool(augment)
        self.data_dir = Path(data_dir).expanduser()
        self.store = OmniglotClasses(self.data_dir, split, rotations, lake_val_alphabets, image_size, cache_dir, download)
        self.images, self.chars, self.classes = self.store.images, self.store.chars, self.store.classes
        chars = self.chars
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

    # ------------------------------------------------------------------------- sampling
    def _classes(self, split: str) -> Tensor:
        return self.store.table(split)

    def num_classes(self, split: str) -> int:
        """How many classes (character x rotation) ``split`` has."""
        return len(self._classes(split))

    def class_names(self, split: str) -> list[str]:
        return self.store.class_names(split)

    def gather(self, classes: Tensor, drawers: Tensor) -> Tensor:
        return self.store.gather(classes, drawers)

    def split_ways(self, split: str) -> int:
        """Classes per episode of ``split``: ``train_ways`` in meta-training, ``ways`` otherwise."""
        return self.train_ways if split == "train" else self.ways

    def split_shots(self, split: str) -> int:
        """Support images per class of ``split``: ``train_shots`` in meta-training, ``shots`` otherwise."""
        return self.train_shots if split == "train" else self.shots

    def support_size(self, split: str) -> int:
        return self.split_ways(split) * self.split_shots(split)

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
        drawers = torch.rand(n, ways, DRAWERS, generator=generator).argsort(-1)[..., : self.split_shots(split) + q]
        return picks, drawers

    def sample(self, split: str, n: int, generator: torch.Generator) -> Episode:
        picks, drawers = self.draw(split, n, generator)
        x = self.gather(self._classes(split)[picks], drawers)  # [n, ways, shots+q, 1, H, W]
        if self.augment and split == "train":  # after the draw: the same classes and drawers as without
            x = affine_distort(x, random_affine(x.shape[:-3].numel(), generator))
        return self._episode(x, self.split_shots(split))

    def sample_tasks(self, split: str, generators: list[torch.Generator]) -> Episode:
        """As ``sample(split, 1, g)`` for each generator, with one gather for all of them."""
        if self.augment and split == "train":  # the distortion draws from each task's generator
            return super().sample_tasks(split, generators)
        picks, drawers = zip(*(self.draw(split, 1, g) for g in generators))
        x = self.gather(self._classes(split)[torch.cat(picks)], torch.cat(drawers))
        return self._episode(x, self.split_shots(split))

    def _episode(self, x: Tensor, shots: int) -> Episode:
        """Support and query sets of images ``[n, ways, shots + queries, 1, H, W]``."""
        return Episode.from_blocks(x, shots)

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
