"""Target tasks for supervised fine-tuning: fixed labelled train / val / test tensors.

A target is a ``SupervisedTarget`` subclass that says how to build its three splits (``build``);
batching, seeding, resumption and device sharding live here once. Training batch ``i`` depends
only on (seed, i): a random subset of ``min(batch_size, n_train)`` training examples, drawn
without replacement within the batch. Under data parallelism every rank draws the same global
batch and takes its contiguous share, the loss is normalised by the *global* batch size and batch
norm uses the global batch's statistics (``FineTuner``: ``GlobalBatchNorm``), so summing the
ranks' gradients gives the one-process gradient (shares may be uneven). Evaluation runs the
whole split on every rank, so its metrics do not depend on the number of ranks.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterator, Sequence

import lightning as L
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from metaft.core.objective import Objective
from metaft.data.episodic import episode_generator, split_generator
from metaft.data.images.episodes import normalize

Splits = dict[str, tuple[Tensor, Tensor]]
Shots = int | str | None


def parse_shots(shots: Shots, pool: int, what: str = "target.shots") -> int:
    """``shots`` as a count: an int in 1..pool, or ``all`` / ``None`` for the whole pool."""
    if shots is None or str(shots).lower() == "all":
        return pool
    try:
        k = int(shots)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a positive integer or 'all', got {shots!r}") from None
    if k < 1:
        raise ValueError(f"{what} must be a positive integer or 'all', got {shots!r}")
    if k > pool:
        raise ValueError(f"{what}={k} but only {pool} labelled training examples per class are available "
                         f"(the rest are held out for validation and test); use {what}<= {pool} or 'all'")
    return k


class _TrainBatches(IterableDataset):
    """Endless training batches ``(x_share, y_share, global_batch_size)``."""

    def __init__(self, dm: "SupervisedTarget") -> None:
        self.dm = dm

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, int]]:
        dm = self.dm
        x, y = dm.splits["train"]
        rank, world = dm.rank_and_world()
        size = min(dm.batch_size, len(x))
        if size < world:
            raise ValueError(f"a training batch of {size} examples cannot be shared by {world} devices; "
                             "lower trainer.devices or use more target.shots")
        step = dm.trainer.global_step if dm.trainer is not None else 0
        while True:
            idx = torch.randperm(len(x), generator=episode_generator(dm.seed, "train", step))[:size]  # TRAIN_STREAM
            share = idx.tensor_split(world)[rank]
            yield x[share], y[share], size
            step += 1


class SupervisedTarget(L.LightningDataModule):
    """Base of every fine-tuning target. Args:
    batch_size: training examples per step (global, over all devices; capped at the training set).
    eval_batch_size: examples per evaluation batch (memory only; metrics do not depend on it,
        except through the batch statistics of transductive batch norm).
    seed: selects the task (function, classes, drawers) and the training batches.
    """

    task: str = "classification"
    # How its classes are identified (``metaft.data.identity.IDENTITIES``): the check that a
    # checkpoint is not fine-tuned on classes it has seen asks this. None: not declared.
    class_identity: str | None = None

    def __init__(self, batch_size: int = 32, eval_batch_size: int = 1000, seed: int = 0) -> None:
        super().__init__()
        if batch_size <= 0 or eval_batch_size <= 0:
            raise ValueError("target.batch_size and target.eval_batch_size must be > 0")
        self.batch_size, self.eval_batch_size, self.seed = batch_size, eval_batch_size, int(seed)
        self._splits: Splits | None = None

    def build(self) -> Splits:
        """``{"train": (x, y), "val": (x, y), "test": (x, y)}``; called once."""
        raise NotImplementedError

    @property
    def splits(self) -> Splits:
        if self._splits is None:
            self._splits = self.build()
        return self._splits

    @property
    def objective(self) -> Objective:
        """What the target's outputs are scored by (its kind of task)."""
        return Objective(self.task)

    @property
    def num_outputs(self) -> int:
        """Outputs of the head: the number of classes, or 1 for regression."""
        if self.objective.regression:
            return 1
        return int(self.splits["train"][1].max()) + 1

    def describe(self) -> dict[str, Any]:
        """Numbers for ``results.json``."""
        return {f"{s}_examples": len(x) for s, (x, _) in self.splits.items()}

    def rank_and_world(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_TrainBatches(self), batch_size=None, num_workers=0)

    def _eval_loader(self, split: str) -> DataLoader:
        # Every rank evaluates the whole split in the same batches: with transductive batch norm a
        # prediction depends on the batch it is in, so sharding would make the metric depend on
        # the number of ranks. The evaluation sets are small; the metric is not gathered.
        x, y = self.splits[split]
        return DataLoader(TensorDataset(x, y), batch_size=self.eval_batch_size, shuffle=False)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")


def split_per_class(n_items: list[int], shots: Shots, val: int, test: int, generator: torch.Generator
                    ) -> tuple[int, list[dict[str, Tensor]]]:
    """Per class, a random order of its items: the first ``test`` are test, the next ``val``
    validation, the first ``shots`` of the rest training. Test and validation items do not depend
    on ``shots``, so runs with different K are scored on the same examples."""
    if val <= 0 or test <= 0:
        raise ValueError("target.val_per_class and target.test_per_class must be > 0")
    pool = min(n_items) - val - test
    if pool <= 0:
        raise ValueError(f"a class has only {min(n_items)} examples: fewer than target.val_per_class + "
                         f"target.test_per_class + 1 = {val + test + 1}; lower them")
    if shots is not None and str(shots).lower() != "all" and str(shots).isdigit() and int(shots) > pool:
        raise ValueError(
            f"target.shots={shots} but only {pool} examples per class are left for training (a class of "
            f"{min(n_items)} after target.val_per_class={val} and target.test_per_class={test}): lower "
            f"target.test_per_class or target.val_per_class to leave more, or use target.shots={pool} (or all)")
    k = parse_shots(shots, pool)
    parts = []
    for n in n_items:
        order = torch.randperm(n, generator=generator)
        parts.append({"test": order[:test], "val": order[test:test + val], "train": order[test + val:test + val + k]})
    return k, parts


# ------------------------------------------------------------------------------------ sinusoid
class SinusoidTarget(SupervisedTarget):
    """One new function ``y = A sin(x - phase)``: ``shots`` random points to fit, ``val_points``
    random points for early stopping, MSE on ``grid_points`` evenly spaced points of ``x_range``.

    ``amplitude`` / ``phase``: the function; ``None`` draws it from ``amp_range`` / ``phase_range``
    with the seed (the meta-training task distribution). ``pool_points``: the labelled training
    points available (``shots=all`` uses them all; smaller K use the first K of them).
    """

    task = "regression"
    class_identity = "no_classes"

    def __init__(self, shots: Shots = 10, amplitude: float | None = None, phase: float | None = None,
                 amp_range: tuple[float, float] = (0.1, 5.0), phase_range: tuple[float, float] = (0.0, math.pi),
                 x_range: tuple[float, float] = (-5.0, 5.0), pool_points: int = 50, val_points: int = 20,
                 grid_points: int = 1000, **common: Any) -> None:
        super().__init__(**common)
        if min(pool_points, val_points, grid_points) <= 0:
            raise ValueError("target.pool_points, target.val_points and target.grid_points must be > 0")
        self.shots = parse_shots(shots, pool_points)
        g = split_generator(self.seed, "test", 1)
        u = torch.rand(2, generator=g, dtype=torch.float64)
        self.amplitude = float(amplitude) if amplitude is not None else amp_range[0] + (amp_range[1] - amp_range[0]) * float(u[0])
        self.phase = float(phase) if phase is not None else phase_range[0] + (phase_range[1] - phase_range[0]) * float(u[1])
        self.x_range, self.pool_points, self.val_points, self.grid_points = tuple(x_range), pool_points, val_points, grid_points

    def f(self, x: Tensor) -> Tensor:
        return self.amplitude * torch.sin(x - self.phase)

    def build(self) -> Splits:
        lo, hi = self.x_range
        g = split_generator(self.seed, "val", 1)
        pool = lo + (hi - lo) * torch.rand(self.pool_points, 1, generator=g)
        val = lo + (hi - lo) * torch.rand(self.val_points, 1, generator=g)
        grid = torch.linspace(lo, hi, self.grid_points).unsqueeze(-1)
        train = pool[: self.shots]
        return {s: (x, self.f(x)) for s, x in (("train", train), ("val", val), ("test", grid))}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "target_amplitude": self.amplitude, "target_phase": self.phase}


# ------------------------------------------------------------------------------------ omniglot
class OmniglotTarget(SupervisedTarget):
    """A new ``ways``-way problem of Omniglot classes never used in meta-training: the test split
    of ``split`` (Vinyals: held-out characters; Lake: the evaluation alphabets), which is disjoint
    from the meta-training and meta-validation classes. Every class is a different character
    (in one of the split's rotations). Per class ``shots`` drawers for training,
    ``val_per_class`` for validation and ``test_per_class`` for test (disjoint drawers).

    Args:
        classes: ``characters`` (``ways`` random held-out classes) or ``alphabet`` (the held-out
            classes of one alphabet: ``alphabet`` by name, or drawn by the seed; ``ways=null``
            takes all its classes).
        data_dir, cache_dir, split, rotations, lake_val_alphabets, image_size: as for
            ``OmniglotDataModule`` (use the meta-training run's values).
    """

    class_identity = "omniglot"  # the test characters of ``split`` (of one alphabet with classes=alphabet)

    def __init__(self, data_dir: str, ways: int | None = 5, shots: Shots = 1, classes: str = "characters",
                 alphabet: str | None = None, val_per_class: int = 4, test_per_class: int = 4,
                 split: str = "vinyals", rotations: bool | None = None, lake_val_alphabets: int = 5,
                 image_size: int = 28, cache_dir: str | None = None, **common: Any) -> None:
        super().__init__(**common)
        from metaft.data.omniglot.classes import OmniglotClasses
        from metaft.data.omniglot.store import DRAWERS

        if classes not in ("characters", "alphabet"):
            raise ValueError(f"target.classes must be 'characters' or 'alphabet', got {classes!r}")
        if split not in ("vinyals", "lake"):
            raise ValueError(f"target.split must be 'vinyals' or 'lake', got {split!r}")
        self.omniglot = OmniglotClasses(data_dir, split, rotations, lake_val_alphabets, image_size, cache_dir,
                                       key="target")
        self.split, self.image_size = split, image_size
        g = split_generator(self.seed, "test", 2)
        held_out = self.omniglot.class_names("test")
        if classes == "alphabet":
            alphabets = sorted({c.split("/")[0] for c in held_out})
            if alphabet is None:
                alphabet = alphabets[int(torch.randint(len(alphabets), (1,), generator=g))]
            elif alphabet not in alphabets:
                raise ValueError(f"target.alphabet={alphabet!r} is not a held-out alphabet of split={split}; "
                                 f"choose one of {alphabets}")
            candidates = [i for i, c in enumerate(held_out) if c.split("/")[0] == alphabet]
        else:
            candidates = list(range(len(held_out)))
        # One rotation per character: two turns of one character as two classes would put the
        # same drawings, turned, into one class's training set and another's test set.
        char_of = self.omniglot.classes["test"][:, 0].tolist()
        distinct: dict[int, int] = {}
        for c in torch.tensor(candidates)[torch.randperm(len(candidates), generator=g)].tolist():
            distinct.setdefault(char_of[c], c)  # the first (random) rotation drawn of each character
        ways = len(distinct) if ways is None else int(ways)
        if not 1 < ways <= len(distinct):
            raise ValueError(f"target.ways={ways}: choose 2..{len(distinct)} (held-out characters available; each "
                             "target class is one character, in one rotation)")
        pick = torch.tensor(list(distinct.values())[:ways])
        self.table = self.omniglot.classes["test"][pick]
        self.names = [held_out[i] for i in pick.tolist()]
        self.ways = ways
        self.shots, self.drawers = split_per_class([DRAWERS] * ways, shots, val_per_class, test_per_class, g)

    def class_names(self) -> list[str]:
        """``ALPHABET/characterNN/rotDDD`` of target class 0, 1, ..."""
        return list(self.names)

    def build(self) -> Splits:
        labels = torch.arange(self.ways)
        out = {}
        for s in ("train", "val", "test"):
            d = torch.stack([p[s] for p in self.drawers])  # [ways, m]
            x = self.omniglot.gather(self.table, d)  # [ways, m, 1, H, W]
            out[s] = (x.flatten(0, 1), labels.repeat_interleave(d.shape[1]))
        return out


# -------------------------------------------------------------------------------------- folder
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


class FolderTarget(SupervisedTarget):
    """Any folder of labelled images, ``root/CLASS_NAME/*.png|jpg``: classes in sorted name
    order, per class ``test_per_class`` test and ``val_per_class`` validation images and ``shots``
    training images (random, by the seed). Images become ``channels`` (1: grey, 3: RGB) x
    ``image_size`` x ``image_size`` in [0, 1]; ``invert`` turns dark-on-light drawings into
    Omniglot's ink-is-1 convention; ``mean`` / ``std`` (one number per channel, or both None)
    then normalise each channel, as an image dataset's ``dataset.mean`` / ``dataset.std`` do.
    The fine-tuning stage sets channels, image_size, mean and std to the checkpoint's
    meta-training data unless the command line gives them (``finetune.conventions``).
    """

    class_identity = "folders"  # the class folders' names: an image source of their own

    def __init__(self, root: str, shots: Shots = 5, val_per_class: int = 2, test_per_class: int = 5,
                 image_size: int = 28, channels: int = 1, invert: bool = False,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None, **common: Any) -> None:
        super().__init__(**common)
        if channels not in (1, 3):
            raise ValueError(f"target.channels must be 1 or 3, got {channels}")
        if (mean is None) != (std is None) or (mean is not None and not (len(mean) == len(std) == channels)):
            raise ValueError(f"target.mean and target.std must both be null or both list {channels} numbers (one per "
                             f"channel, target.channels={channels}), got {mean} and {std}")
        if std is not None and min(std) <= 0:
            raise ValueError(f"target.std must be positive, got {std}")
        self.mean = None if mean is None else [float(m) for m in mean]
        self.std = None if std is None else [float(v) for v in std]
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(f"target.root={self.root} is not a directory; point it at a folder of "
                                    "CLASS_NAME/*.png|jpg subfolders")
        self.files: dict[str, list[Path]] = {}
        for d in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            files = sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
            if files:
                self.files[d.name] = files
        if len(self.files) < 2:
            raise ValueError(f"target.root={self.root} has {len(self.files)} class folders with images; "
                             "fine-tuning needs at least 2 (layout: CLASS_NAME/*.png|jpg)")
        self.image_size, self.channels, self.invert = image_size, channels, invert
        g = split_generator(self.seed, "test", 3)
        self.shots, self.parts = split_per_class([len(f) for f in self.files.values()], shots,
                                                 val_per_class, test_per_class, g)

    def class_names(self) -> list[str]:
        return list(self.files)

    def load(self, path: Path) -> Tensor:
        with Image.open(path) as img:
            img = img.convert("L" if self.channels == 1 else "RGB").resize((self.image_size,) * 2, Image.BILINEAR)
            x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).float().div(255)
        x = x.view(self.image_size, self.image_size, self.channels).permute(2, 0, 1)
        x = 1 - x if self.invert else x
        return normalize(x.contiguous(), self.mean, self.std)

    def build(self) -> Splits:
        out = {}
        for s in ("train", "val", "test"):
            xs, ys = [], []
            for label, (files, part) in enumerate(zip(self.files.values(), self.parts)):
                xs += [self.load(files[i]) for i in part[s].tolist()]
                ys += [label] * len(part[s])
            out[s] = (torch.stack(xs), torch.tensor(ys))
        return out
