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
        for name in _FIELDS[1:]:  # not dataclasses.fields(): an episode is made every meta-step
            t = getattr(self, name)
            if t.shape[0] != n:
                raise ValueError(f"Episode.{name} has {t.shape[0]} tasks, support_x has {n}")

    @property
    def num_tasks(self) -> int:
        return self.support_x.shape[0]

    def to(self, *args, **kwargs) -> "Episode":
        moved = [getattr(self, name).to(*args, **kwargs) for name in _FIELDS]
        if all(m is getattr(self, name) for m, name in zip(moved, _FIELDS)):
            return self  # already there (a CPU run): no new episode
        return Episode(*moved)

    def __getitem__(self, idx: int | slice) -> "Episode":
        """Select tasks; an int keeps the task dimension (size 1)."""
        if isinstance(idx, int):
            idx = slice(idx, idx + 1)
        return Episode(*(getattr(self, name)[idx] for name in _FIELDS))

    def contiguous(self) -> "Episode":
        """The same tasks in contiguous memory (after a strided selection of tasks)."""
        return Episode(*(getattr(self, name).contiguous() for name in _FIELDS))

    @staticmethod
    def from_blocks(x: torch.Tensor, shots: int) -> "Episode":
        """Tasks from class-blocked examples ``x [tasks, ways, shots + queries, ...]``: the first
        ``shots`` of each class are support, the rest query; labels are the class's position."""
        n, ways, s = x.shape[0], x.shape[1], shots
        q = x.shape[2] - s
        labels = torch.arange(ways)
        return Episode(
            x[:, :, :s].reshape(n, ways * s, *x.shape[3:]),
            labels.repeat_interleave(s).expand(n, -1).contiguous(),
            x[:, :, s:].reshape(n, ways * q, *x.shape[3:]),
            labels.repeat_interleave(q).expand(n, -1).contiguous(),
        )

    @staticmethod
    def cat(episodes: list["Episode"]) -> "Episode":
        return Episode(*(torch.cat([getattr(e, name) for e in episodes]) for name in _FIELDS))


_FIELDS = tuple(f.name for f in fields(Episode))
