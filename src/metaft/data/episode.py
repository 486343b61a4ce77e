"""The one episode type: support and query sets with a leading task (meta-batch) dimension."""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class Episode:
    """A meta-batch of tasks. Every tensor has shape ``[tasks, examples, ...]``.

    Classification labels are episode-local class indices in ``[0, ways)``; regression
    targets are float tensors ``[tasks, examples, 1]``.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor

    def __post_init__(self) -> None:
        n = self.support_x.shape[0]
        for f in fields(self):
            t = getattr(self, f.name)
            if t.shape[0] != n:
                raise ValueError(f"Episode.{f.name} has {t.shape[0]} tasks, support_x has {n}")

    @property
    def num_tasks(self) -> int:
        return self.support_x.shape[0]

    def to(self, *args, **kwargs) -> "Episode":
        return Episode(*(getattr(self, f.name).to(*args, **kwargs) for f in fields(self)))

    def __getitem__(self, idx: int | slice) -> "Episode":
        """Select tasks; an int keeps the task dimension (size 1)."""
        if isinstance(idx, int):
            idx = slice(idx, idx + 1)
        return Episode(*(getattr(self, f.name)[idx] for f in fields(self)))

    @staticmethod
    def cat(episodes: list["Episode"]) -> "Episode":
        return Episode(*(torch.cat([getattr(e, f.name) for e in episodes]) for f in fields(Episode)))
