"""``EpisodicDataModule``: fresh training meta-batches, fixed seeded validation and test episodes.

A dataset is a subclass that says how to draw ``n`` tasks of a split (``sample``) and what kind
of task it is (``task``); batching, seeding, resumption and device sharding live here once.
"""
from __future__ import annotations

import hashlib
from typing import Any, Iterator

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from metaft.data.episode import Episode

# Distinct streams per split for the fixed problems of fine-tuning targets and the study.
_SPLIT_OFFSET = {"train": 0, "val": 1_000_003, "test": 2_000_029}

# The version of the meta-training stream, recorded in results.json. Version 1 drew meta-batch i
# from ``split_generator(seed, "train", i)``, linear in (seed, i): training seed 0 at step 139 + j
# drew with validation seed 1712's generator j. Version 2 hashes (seed, i) as the evaluation
# episodes do (those, and every validation and test stream, are unchanged).
TRAIN_STREAM = 2


def split_seed(seed: int, split: str, index: int = 0) -> int:
    """The generator seed of ``split_generator``: linear in (seed, index), kept because the fixed
    validation and test problems of fine-tuning targets and the study are drawn with it (for seeds
    less than 5,000 apart its val and test streams never meet: ``tests/unit/test_streams.py``)."""
    return (int(seed) * 7_919 + _SPLIT_OFFSET[split] + index * 104_729) % (2**63 - 1)


def split_generator(seed: int, split: str, index: int = 0) -> torch.Generator:
    """A generator determined by (seed, split, index) alone."""
    g = torch.Generator()
    g.manual_seed(split_seed(seed, split, index))
    return g


def hashed_seed(seed: int, split: str, index: int) -> int:
    """A 63-bit generator seed hashed from (seed, split, index): no two triples share one in practice."""
    digest = hashlib.sha256(f"metaft-episode/{int(seed)}/{split}/{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def episode_generator(seed: int, split: str, index: int) -> torch.Generator:
    """The generator of evaluation episode ``index`` of ``split`` (and of meta-training batch
    ``index`` for ``split="train"``), determined by (seed, split, index) alone: episode i is the
    same whatever the batch size, the number of episodes or of ranks. Hashed, so no (seed, index)
    pair shares a stream with another or with training."""
    g = torch.Generator()
    g.manual_seed(hashed_seed(seed, split, index))
    return g


def _as_is(batch: Any) -> Any:
    return batch


class _TrainEpisodes(IterableDataset):
    """Endless meta-batches; batch ``i`` depends only on (seed, i), so a resumed run that starts
    at step ``i`` sees exactly the episodes an uninterrupted run would. Under data parallelism
    each rank takes its contiguous share of the same global meta-batch."""

    def __init__(self, dm: "EpisodicDataModule") -> None:
        self.dm = dm

    def __iter__(self) -> Iterator[Episode | tuple[torch.Tensor, torch.Tensor]]:
        dm = self.dm
        step = dm.start_step()
        rank, world = dm.rank_and_world()
        labelled = dm.labelled_batch_size
        per_rank = (labelled or dm.meta_batch_size) // world
        while True:
            g = episode_generator(dm.seed, "train", step)  # stream version TRAIN_STREAM
            if labelled:  # supervised pre-training: (inputs, global labels) over all training classes
                x, y = dm.labelled_batch("train", labelled, g)
                yield x[rank * per_rank : (rank + 1) * per_rank], y[rank * per_rank : (rank + 1) * per_rank]
            else:
                episode = dm.sample("train", dm.meta_batch_size, g)
                yield episode if world == 1 else episode[rank * per_rank : (rank + 1) * per_rank]
            step += 1


class _FixedEpisodes(Dataset):
    def __init__(self, batches: list[Episode]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> Episode:
        return self.batches[i]


class EpisodicDataModule(L.LightningDataModule):
    """Base of every episodic dataset. Args:
    meta_batch_size: tasks per meta-training step (global, over all devices).
    val_episodes, test_episodes: how many fixed evaluation tasks.
    eval_batch_size: tasks per evaluation batch (memory only; results do not depend on it).
    seed: selects the training stream and the fixed evaluation episodes.
    """

    # Whether this dataset's scores are compared with scoring one example at a time (people on
    # Lake's runs): its queries are then always normalised with the support set's statistics.
    inductive_only: bool = False
    # Whether the validation episodes are distinct from the test ones (Lake's runs have only the runs).
    has_val_split: bool = True

    task: str = "classification"
    # How its classes are identified (``metaft.data.identity.IDENTITIES``), so a checkpoint is never
    # scored on classes it has seen; None: not declared, such a checkpoint is refused unless allowed.
    class_identity: str | None = None

    def __init__(
        self,
        meta_batch_size: int = 25,
        val_episodes: int = 100,
        test_episodes: int = 1000,
        eval_batch_size: int = 100,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name, v in (
            ("meta_batch_size", meta_batch_size),
            ("val_episodes", val_episodes),
            ("test_episodes", test_episodes),
            ("eval_batch_size", eval_batch_size),
        ):
            if v <= 0:
                raise ValueError(f"dataset.{name} must be > 0, got {v}")
        self.meta_batch_size = meta_batch_size
        self.val_episodes, self.test_episodes = val_episodes, test_episodes
        self.eval_batch_size = eval_batch_size
        self.seed = int(seed)
        self._fixed: dict[str, list[Episode]] = {}
        # Examples per training batch when the learner trains on labelled batches instead of
        # episodes (supervised pre-training sets it in its setup); None: episodes.
        self.labelled_batch_size: int | None = None

    def sample(self, split: str, n: int, generator: torch.Generator) -> Episode:
        """Draw ``n`` tasks of ``split`` (``train``, ``val`` or ``test``) using ``generator`` only."""
        raise NotImplementedError

    def sample_tasks(self, split: str, generators: list[torch.Generator]) -> Episode:
        """One task per generator, in order; task ``i`` depends on ``generators[i]`` only (the
        evaluation episodes). Datasets may override it to batch the work, with the same tasks."""
        return Episode.cat([self.sample(split, 1, g) for g in generators])

    def labelled_batch(self, split: str, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` random examples of ``split`` with their global class index in ``[0, num_classes(split))``
        (for supervised pretraining baselines)."""
        raise NotImplementedError(
            f"{type(self).__name__} has no labelled_batch(): this dataset offers episodes only; use a dataset "
            "with a global class list (e.g. dataset=omniglot) for supervised pretraining"
        )

    def num_classes(self, split: str) -> int:
        """How many global classes ``split`` has (the range of ``labelled_batch`` labels)."""
        raise NotImplementedError(
            f"{type(self).__name__} has no num_classes(): this dataset offers episodes only; use a dataset "
            "with a global class list (e.g. dataset=omniglot) for supervised pretraining"
        )

    def support_size(self, split: str) -> int | None:
        """Support examples of one task of ``split`` (None: not fixed), for settings sized by it
        (``algorithm.inner_batch``) to be checked before anything runs."""
        return None

    def start_step(self) -> int:
        return self.trainer.global_step if self.trainer is not None else 0

    def rank_and_world(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        world = self.trainer.world_size
        if self.meta_batch_size % world:
            raise ValueError(
                f"dataset.meta_batch_size={self.meta_batch_size} must be divisible by the number of "
                f"devices ({world}) so every rank gets the same share of each meta-batch"
            )
        if self.labelled_batch_size and self.labelled_batch_size % world:
            raise ValueError(
                f"algorithm.batch_size={self.labelled_batch_size} must be divisible by the number of "
                f"devices ({world}) so every rank gets the same share of each batch"
            )
        return self.trainer.global_rank, world

    def fixed_episodes(self, split: str) -> list[Episode]:
        """The evaluation episodes of ``split``, sampled once, chunked by ``eval_batch_size``.
        Episode ``i`` comes from its own generator (``episode_generator``), so only the settings
        that define a task change it: not ``eval_batch_size``, the episode count or the ranks."""
        if split not in self._fixed:
            total = self.val_episodes if split == "val" else self.test_episodes
            size = self.eval_batch_size
            self._fixed[split] = [
                self.sample_tasks(split, [episode_generator(self.seed, split, i) for i in range(start, min(start + size, total))])
                for start in range(0, total, size)
            ]
        return self._fixed[split]

    def fingerprint(self, split: str) -> str:
        """SHA-256 of the fixed episodes of ``split``: equal fingerprints mean paired comparisons."""
        # One stream per field, so the digest does not depend on how the episodes are chunked;
        # one pass over the episodes (datasets may read their images on access).
        fields = ("support_x", "support_y", "query_x", "query_y")
        streams = {name: hashlib.sha256() for name in fields}
        for ep in self.fixed_episodes(split):
            for name in fields:
                streams[name].update(getattr(ep, name).contiguous().numpy().tobytes())
        h = hashlib.sha256()
        for name in fields:
            h.update(streams[name].digest())
        return h.hexdigest()[:16]

    def train_dataloader(self) -> DataLoader:
        # The batches are made whole by sample(): no collation (default_convert walks every field).
        return DataLoader(_TrainEpisodes(self), batch_size=None, num_workers=0, collate_fn=_as_is)

    def _eval_loader(self, split: str) -> DataLoader:
        # Rank r evaluates tasks r, r+world, ... of every batch: every episode exactly once (a
        # distributed sampler would pad with duplicates), every rank some however few the batches
        # are, and EpisodeStats gathers the ranks' values. A task's numbers do not depend on the
        # other tasks of its batch (batch norm normalises within a task), so nor on the ranks.
        rank, world = self.rank_and_world()
        batches = self.fixed_episodes(split)
        if world > 1:
            shards = (ep[rank::world] for ep in batches)
            batches = [s.contiguous() for s in shards if s.num_tasks]
            if not batches:
                raise ValueError(f"dataset.{split}_episodes is smaller than the {world} devices: every rank needs at "
                                 f"least one episode; raise dataset.{split}_episodes or lower trainer.devices")
        return DataLoader(_FixedEpisodes(batches), batch_size=None, shuffle=False, collate_fn=_as_is)

    def gathered_order(self, split: str) -> torch.Tensor:
        """The episode index of each value the ranks' evaluation of ``split`` gathers, in order:
        rank 0's share of every batch, then rank 1's, ... (``_eval_loader``'s sharding)."""
        _, world = self.rank_and_world()
        sizes = [ep.num_tasks for ep in self.fixed_episodes(split)]
        batches = torch.arange(sum(sizes)).split(sizes)  # each batch's episode indices, sharded as the loader does
        return torch.cat([batch[rank::world] for rank in range(world) for batch in batches])

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
