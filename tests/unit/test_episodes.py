"""Evaluation episodes: episode i depends on (seed, split, i) and the task's definition only, not
on the evaluation batch size, the number of episodes or the number of ranks."""
from __future__ import annotations

import torch

from metaft.data import Episode, SinusoidDataModule
from metaft.data.episodic import episode_generator


def _tasks(batches: list[Episode]) -> Episode:
    return Episode.cat(batches)


def _equal(a: Episode, b: Episode) -> bool:
    return all(torch.equal(getattr(a, f), getattr(b, f)) for f in ("support_x", "support_y", "query_x", "query_y"))


def test_episodes_do_not_depend_on_batch_size_or_count():
    big = SinusoidDataModule(test_episodes=1000, eval_batch_size=500)
    small = SinusoidDataModule(test_episodes=1000, eval_batch_size=250)
    assert [e.num_tasks for e in small.fixed_episodes("test")] == [250] * 4
    assert big.fingerprint("test") == small.fingerprint("test")
    fewer = SinusoidDataModule(test_episodes=300, eval_batch_size=7)
    assert _equal(_tasks(fewer.fixed_episodes("test")), _tasks(big.fixed_episodes("test"))[:300])
    # What defines the task does change them: the seed, the split, the query count.
    assert SinusoidDataModule(seed=1).fingerprint("test") != SinusoidDataModule(seed=0).fingerprint("test")
    val, test = (_tasks(SinusoidDataModule(val_episodes=50, test_episodes=50).fixed_episodes(s)) for s in ("val", "test"))
    assert not torch.equal(val.support_x, test.support_x)
    assert SinusoidDataModule(eval_queries=50).fingerprint("test") != big.fingerprint("test")


def test_episode_i_is_its_own_generators_draw():
    """Reference: episode i is ``sample(split, 1, episode_generator(seed, split, i))``."""
    dm = SinusoidDataModule(val_episodes=9, eval_batch_size=4, seed=3)
    got = _tasks(dm.fixed_episodes("val"))
    for i in (0, 4, 8):
        assert _equal(got[i], dm.sample("val", 1, episode_generator(3, "val", i)))
    seeds = {int(torch.randint(2**62, (1,), generator=episode_generator(s, sp, i)))
             for s in range(3) for sp in ("val", "test") for i in range(50)}
    assert len(seeds) == 300  # every (seed, split, index) its own stream


def test_ranks_share_out_the_same_episodes():
    """Under N ranks each episode is evaluated once, and is the episode one rank would see."""
    one = _tasks(SinusoidDataModule(test_episodes=10, eval_batch_size=4).fixed_episodes("test"))
    for world in (2, 3):
        dm = SinusoidDataModule(test_episodes=10, eval_batch_size=4)
        seen = []
        for rank in range(world):
            dm.rank_and_world = lambda r=rank: (r, world)
            for b, shard in enumerate(dm.test_dataloader()):
                seen += [(4 * b + rank + world * j, shard[j]) for j in range(shard.num_tasks)]
        assert sorted(i for i, _ in seen) == list(range(10))
        assert all(_equal(ep, one[i]) for i, ep in seen)
