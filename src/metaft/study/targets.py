"""The study's target problems: N-way K-shot problems of held-out classes (or new functions),
drawn from their own seed, so every initialisation is adapted and tested on exactly the same
problems (paired; ``problems.problem_fingerprints`` names each)."""
from __future__ import annotations

import hashlib

import hydra
from omegaconf import DictConfig, OmegaConf

from metaft.data.episode import Episode
from metaft.data.episodic import EpisodicDataModule, split_generator


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

