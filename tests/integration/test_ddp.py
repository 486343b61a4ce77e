"""Data-parallel meta-training on the CPU (2 gloo processes) reproduces the 1-process update."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from metaft.stages import main

STEPS = ["trainer.max_steps=8", "trainer.val_check_interval=4", "dataset.meta_batch_size=8",
         "dataset.val_episodes=30", "dataset.test_episodes=60", "dataset.eval_batch_size=20",
         "progress=log", "seed=5"]


@pytest.mark.parametrize("algorithm", ["maml", "reptile"])
def test_two_ranks_give_the_one_rank_update(run_config, algorithm):
    runs = {}
    for hw in ("cpu", "ddp_cpu"):
        cfg = run_config("train", [*STEPS, f"algorithm={algorithm}", f"hardware={hw}"], hw)
        main(cfg)
        out = Path(cfg.hydra.runtime.output_dir)
        runs[hw] = (torch.load(out / "checkpoints" / "last.ckpt", weights_only=True),
                    json.loads((out / "results.json").read_text()))
    (one, r1), (two, r2) = runs["cpu"], runs["ddp_cpu"]
    assert one["global_step"] == two["global_step"] == 8
    diff = max((one["state_dict"][k] - two["state_dict"][k]).abs().max().item() for k in one["state_dict"])
    moved = max((one["state_dict"][k]).abs().max().item() for k in one["state_dict"])
    print(f"{algorithm}: max |w_1rank - w_2ranks| after 8 steps = {diff:.3g}")
    assert diff < 1e-5 * max(1.0, moved)
    # Every test episode counted exactly once across the two ranks, same metric.
    assert r1["test/episodes"] == r2["test/episodes"] == 60
    assert r2["test/mse"] == pytest.approx(r1["test/mse"], rel=1e-4)
