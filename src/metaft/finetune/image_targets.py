"""``ImageTarget``: a fine-tuning problem of ``ways`` classes of a benchmark's held-out split
(the test classes by default, never seen in meta-training on that benchmark), ``shots`` training
images per class and other images of the same classes for validation and test."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from metaft.data.episodic import split_generator
from metaft.data.images.datamodule import FewShotImages
from metaft.data.images.source import ClassLists
from metaft.finetune.targets import Shots, Splits, SupervisedTarget, split_per_class


class ImageTarget(SupervisedTarget):
    """Args:
        name, data_dir, layout, class_lists, image_size, channels, mean, std, cache_dir,
            download, verify: as for ``FewShotImages`` (use the meta-training run's values for
            image_size, channels and normalisation).
        split: whose classes to draw from (``test``: held out from meta-training).
        ways: classes of the problem (``null``: all of the split's).
        shots: K training images per class, or ``all``.
        val_per_class, test_per_class: validation and test images per class.
    """

    class_identity = "benchmark"  # ``split``'s classes of benchmark ``name`` (or ``class_lists``)

    def __init__(self, name: str, data_dir: str, ways: int | None = 5, shots: Shots = 1, split: str = "test",
                 val_per_class: int = 10, test_per_class: int = 15, layout: str | None = None,
                 class_lists: ClassLists | None = None, image_size: int = 84, channels: int = 3,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 cache_dir: str | None = None, download: bool = False, verify: bool = True, **common: Any) -> None:
        super().__init__(**common)
        if split not in ("train", "val", "test"):
            raise ValueError(f"target.split must be train, val or test, got {split!r}")
        self.data = FewShotImages(name, data_dir, layout=layout, class_lists=class_lists, image_size=image_size,
                                    channels=channels, ways=1, shots=1, queries=1, mean=mean, std=std,
                                    cache_dir=cache_dir, download=download, verify=verify)
        self.name, self.split = name, split
        table = self.data.table(split)
        names = self.data.class_names(split)
        ways = len(names) if ways is None else int(ways)
        if not 1 < ways <= len(names):
            raise ValueError(f"target.ways={ways}: choose 2..{len(names)} (classes of the {split} split of {name})")
        g = split_generator(self.seed, "test", 4)
        self.picks = torch.randperm(len(names), generator=g)[:ways]
        self.names = [names[i] for i in self.picks.tolist()]
        self.ways = ways
        counts = table.counts[self.picks].tolist()
        self.shots, self.parts = split_per_class(counts, shots, val_per_class, test_per_class, g)

    def class_names(self) -> list[str]:
        return list(self.names)

    def build(self) -> Splits:
        table = self.data.table(self.split)
        out = {}
        for s in ("train", "val", "test"):
            xs, ys = [], []
            for label, (c, part) in enumerate(zip(self.picks.tolist(), self.parts)):
                rows = table.table[c, part[s]]
                xs.append(self.data.images(self.split, rows))
                ys.append(torch.full((len(rows),), label, dtype=torch.long))
            out[s] = (torch.cat(xs), torch.cat(ys))
        return out

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "target_classes": self.class_names()}
