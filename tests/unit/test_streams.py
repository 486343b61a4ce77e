"""Random streams: meta-training batches never share a generator with a validation or test stream."""
from __future__ import annotations

import torch

from metaft.data.episodic import TRAIN_STREAM, episode_generator, hashed_seed, split_seed


def test_training_stream_meets_no_evaluation_stream() -> None:
    # The collision version 1 had: training seed 0 at step 139 + j drew validation seed 1712's draw j.
    assert split_seed(0, "train", 139) == split_seed(1712, "val", 0)
    assert TRAIN_STREAM == 2
    train = {hashed_seed(s, "train", i) for s in range(20) for i in range(5_000)}
    assert len(train) == 20 * 5_000  # no two training batches share a stream either
    evaluation = {split_seed(s, split, i) for s in range(2_000) for split in ("val", "test") for i in range(50)}
    evaluation |= {hashed_seed(s, split, i) for s in range(20) for split in ("val", "test") for i in range(2_000)}
    assert not train & evaluation
    # The training batch generator is the hashed one.
    a, b = episode_generator(0, "train", 139), torch.Generator().manual_seed(hashed_seed(0, "train", 139))
    assert torch.equal(torch.randint(1 << 30, (4,), generator=a), torch.randint(1 << 30, (4,), generator=b))


def test_linear_validation_and_test_streams_stay_apart() -> None:
    """The fixed problems of fine-tuning targets and the study keep their linear streams (their
    numbers stay reproducible); those of validation and test never meet for seeds < 5,000 apart:
    (a - b) * 7919 + (i - j) * 104729 = 1000026 has no solution with |a - b| < 5000."""
    gap = split_seed(0, "test", 0) - split_seed(0, "val", 0)
    assert all((gap - d * 7_919) % 104_729 for d in range(-5_000, 5_000))
    values = {split_seed(s, "val", i) for s in range(300) for i in range(300)}
    assert not values & {split_seed(s, "test", i) for s in range(300) for i in range(300)}
