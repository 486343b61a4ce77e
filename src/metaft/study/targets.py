"""The study's target problems: N-way K-shot problems of held-out classes (or new functions),
drawn from their own seed, so every initialisation is adapted and tested on exactly the same
problems (paired; ``problems.problem_fingerprints`` names each).

Nested supports (``target.nested``, the default): the problems of one N are drawn once, at the
largest K, and each K's support set is the first K examples of each class of that one (K=5's
contains K=1's), with the same queries: a curve against K then measures more labels of the same
problem, not another problem (what "labels needed to reach an accuracy" asks)."""
from __future__ import annotations

import hashlib

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from metaft.data.episode import Episode
from metaft.data.episodic import EpisodicDataModule, split_generator
from metaft.finetune.targets import parse_shots


def datamodule(dataset: DictConfig, ways: int | None, shots: int, test_per_class: int) -> EpisodicDataModule:
    """The target's datamodule with ``ways``/``shots``/``test_per_class`` set (regression: no ways)."""
    cfg = OmegaConf.to_container(dataset, resolve=True)
    cfg.update(shots=shots, eval_queries=test_per_class, queries=test_per_class)  # training queries: unused here
    if ways is not None:
        cfg.update(ways=ways)
    return hydra.utils.instantiate(cfg)


def problems(dm: EpisodicDataModule, split: str, n: int, seed: int, key: str, chunk: int = 100) -> list[Episode]:
    """``n`` problems of ``split`` in chunks of at most ``chunk`` (an ``Episode`` each). Problem
    ``i`` depends on (seed, key, i) alone: never on ``n``, the chunk size or the initialisation."""
    base = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)
    out, done = [], 0
    while done < n:
        size = min(chunk, n - done)
        eps = [dm.sample(split, 1, split_generator(seed, split, base + done + i)) for i in range(size)]
        out.append(Episode.cat(eps))
        done += size
    return out



def first(episodes: list[Episode], n: int) -> list[Episode]:
    """The first ``n`` problems of a list of chunks."""
    out, left = [], n
    for ep in episodes:
        if left <= 0:
            break
        out.append(ep if ep.num_tasks <= left else ep[:left])
        left -= out[-1].num_tasks
    return out


def nested(episode: Episode, k: int, regression: bool = False) -> Episode:
    """Every problem of ``episode`` with its support cut to the first ``k`` examples of each class
    (regression: the first ``k`` examples), in their order; the queries unchanged."""
    sy = episode.support_y
    p, s = sy.shape[:2]
    if regression:
        if k > s:
            raise ValueError(f"nested supports: K={k} but the problems hold {s} support examples")
        keep = torch.arange(k).expand(p, k)
    else:
        ways = int(sy.max()) + 1
        counts = torch.stack([(sy == c).sum(1) for c in range(ways)], 1)  # [P, ways]
        if not bool((counts == counts[0, 0]).all()) or k > int(counts[0, 0]):
            raise ValueError(f"nested supports: K={k} needs at least {k} support examples of every class, "
                             f"the problems hold {counts.min().item()} to {counts.max().item()}")
        # Class-major positions in their original order (a stable sort by class), first k of each.
        order = torch.sort(sy, dim=1, stable=True).indices.view(p, ways, -1)[:, :, :k]
        keep = order.reshape(p, -1).sort(1).values
    rows = torch.arange(p)[:, None]
    idx = keep.to(sy.device)
    return Episode(episode.support_x[rows, idx], sy[rows, idx], episode.query_x, episode.query_y)


class Problems:
    """The test and validation problems of one N at each K: nested (drawn once at the largest K of
    ``target.shots``) or, with ``target.nested=false``, drawn afresh per K."""

    def __init__(self, cfg: DictConfig, ways: int | None, val_problems: int, regression: bool) -> None:
        self.cfg, self.ways, self.n_val, self.regression = cfg, ways, val_problems, regression
        t = cfg.target
        self.all = int(t.all_shots)
        self.largest = max(parse_shots(k, self.all) for k in t.shots)
        self._drawn: tuple[list[Episode], list[Episode]] | None = None

    def _draw(self, k: int, key: str) -> tuple[list[Episode], list[Episode]]:
        t = self.cfg.target
        dm = datamodule(self.cfg.dataset, self.ways, k, int(t.test_per_class))
        return (problems(dm, t.split, int(t.problems), int(t.seed), key, int(t.chunk)),
                problems(dm, "val", self.n_val, int(t.seed), key, int(t.chunk)))

    def at(self, shots: object) -> tuple[list[Episode], list[Episode]]:
        """``(test, val)`` problems at K = ``shots`` (an int or ``all``)."""
        k = parse_shots(shots, self.all)
        if not bool(self.cfg.target.get("nested", False)):
            return self._draw(k, f"N{self.ways}_K{shots}")
        if self._drawn is None:
            self._drawn = self._draw(self.largest, f"N{self.ways}_nested")
        test, val = self._drawn
        return ([nested(ep, k, self.regression) for ep in test], [nested(ep, k, self.regression) for ep in val])
