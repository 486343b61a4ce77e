"""Sinusoid regression tasks (Finn et al. 2017): y = A sin(x - phase)."""
from __future__ import annotations

import math

import torch

from metaft.data.episodic import EpisodicDataModule
from metaft.data.episode import Episode


class SinusoidDataModule(EpisodicDataModule):
    """Amplitude U[amp_min, amp_max], phase U[phase_min, phase_max], x U[x_min, x_max].

    ``shots`` support points per task; ``queries`` query points in meta-training and
    ``eval_queries`` at validation and test. ``common``: ``EpisodicDataModule``'s arguments.
    """

    task = "regression"
    class_identity = "no_classes"

    def __init__(
        self,
        shots: int = 10,
        queries: int = 10,
        eval_queries: int = 100,
        amp_range: tuple[float, float] = (0.1, 5.0),
        phase_range: tuple[float, float] = (0.0, math.pi),
        x_range: tuple[float, float] = (-5.0, 5.0),
        **common: int,
    ) -> None:
        super().__init__(**common)
        for name, v in (("shots", shots), ("queries", queries), ("eval_queries", eval_queries)):
            if v <= 0:
                raise ValueError(f"dataset.{name} must be > 0, got {v}")
        self.shots, self.queries, self.eval_queries = shots, queries, eval_queries
        self.amp_range, self.phase_range, self.x_range = tuple(amp_range), tuple(phase_range), tuple(x_range)
        self._scale: tuple[torch.Tensor, torch.Tensor] | None = None

    def sample_functions(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Amplitudes and phases of ``n`` tasks, shape ``[n, 1, 1]`` each."""
        # In place on the uniforms (the same numbers as lo + span * u), amplitude and phase in one
        # operator each: sampling is a handful of tiny operations, and it must stay far cheaper
        # than a meta-step.
        u = torch.rand(2, n, 1, 1, generator=generator)
        if self._scale is None or self._scale[0].dtype != u.dtype:  # both spans and starts, made once
            ranges = torch.tensor([self.amp_range, self.phase_range], dtype=torch.float64)
            span, start = ranges[:, 1] - ranges[:, 0], ranges[:, 0]
            self._scale = (span.to(u.dtype).view(2, 1, 1, 1), start.to(u.dtype).view(2, 1, 1, 1))
        u.mul_(self._scale[0]).add_(self._scale[1])
        return u[0], u[1]

    def support_size(self, split: str) -> int:
        return self.shots

    def sample(self, split: str, n: int, generator: torch.Generator) -> Episode:
        q = self.queries if split == "train" else self.eval_queries
        amp, phase = self.sample_functions(n, generator)
        lo, hi = self.x_range
        x = torch.rand(n, self.shots + q, 1, generator=generator).mul_(hi - lo).add_(lo)
        y = torch.sin(x - phase).mul_(amp)
        return Episode(x[:, : self.shots], y[:, : self.shots], x[:, self.shots :], y[:, self.shots :])
