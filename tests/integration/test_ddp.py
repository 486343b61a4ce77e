"""Data-parallel meta-training on the CPU (2 gloo processes) reproduces the 1-process update."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from metaft.stages import main

STEPS = ["trainer.max_steps=8", "trainer.val_check_interval=4", "dataset.meta_batch_size=8",
         "dataset.val_episodes=30", "dataset.test_episodes=60", "dataset.eval_batch_size=20",
         "progress=log", "seed=5"]


@pytest.mark.parametrize("algorithm", ["maml", "reptile"])
def test_two_ranks_give_the_one_rank_update(run_config, algorithm):
    runs, outs = {}, {}
    for hw in ("cpu", "ddp_cpu"):
        cfg = run_config("train", [*STEPS, f"algorithm={algorithm}", f"hardware={hw}"], hw)
        main(cfg)
        out = outs[hw] = Path(cfg.hydra.runtime.output_dir)
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
    # Each episode's score is filed under its own index whichever rank scored it (the ranks take
    # interleaved tasks of every batch): the two files agree row by row.
    files = [np.loadtxt(outs[hw] / "test_episodes.csv", delimiter=",", skiprows=1) for hw in ("cpu", "ddp_cpu")]
    assert (files[0][:, 0] == np.arange(60)).all() and (files[1][:, 0] == np.arange(60)).all()
    assert files[1][:, 1] == pytest.approx(files[0][:, 1], rel=1e-4, abs=1e-7)


def _omniglot() -> Path:
    from omegaconf import OmegaConf

    d = Path(OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "paths" / "default.yaml").data_dir)
    return (d if d.is_absolute() else (Path(__file__).resolve().parents[2] / d).resolve()) / "omniglot"


@pytest.mark.slow  # 4 short Conv4 runs, two of them 2 spawned processes each
@pytest.mark.needs_data(_omniglot(), "Omniglot data")
@pytest.mark.parametrize("algorithm, extra", [
    # Pre-training shares each labelled batch out across the ranks: batch norm must see the whole batch.
    ("pretrain", ["algorithm.batch_size=12", "algorithm.eval_inner_steps=2"]),
    # Episodes: each task is normalised within itself, on whichever rank it is.
    ("maml", ["dataset.meta_batch_size=4", "dataset.queries=2"])])
def test_two_ranks_give_the_one_rank_update_on_conv4(run_config, algorithm, extra, tmp_path):
    # SGD: Adam would turn the rounding noise of the conv biases' zero gradient (batch norm
    # cancels them) into full-size steps of either sign.
    common = [f"algorithm={algorithm}", "dataset=omniglot", "model=conv4", "model.filters=4", "dataset.eval_queries=2",
              "algorithm.optimizer._target_=torch.optim.SGD", "algorithm.optimizer.lr=0.1", "trainer.max_steps=3",
              "trainer.val_check_interval=3", "checkpoint.every_n_train_steps=3", "dataset.val_episodes=4",
              "dataset.test_episodes=6", "dataset.eval_batch_size=3", "progress=log", "seed=3",
              f"paths.cache_dir={tmp_path / 'cache'}", *extra]
    runs = {}
    for hw in ("cpu", "ddp_cpu"):
        cfg = run_config("train", [*common, f"hardware={hw}"], hw)
        main(cfg)
        out = Path(cfg.hydra.runtime.output_dir)
        runs[hw] = (torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"],
                    json.loads((out / "results.json").read_text()))
    (one, r1), (two, r2) = runs["cpu"], runs["ddp_cpu"]
    diff = max((one[k] - two[k]).abs().max().item() for k in one if one[k].is_floating_point())
    assert diff < 1e-4, diff
    assert r1["test/episodes"] == r2["test/episodes"] == 6
    assert r2["test/acc"] == pytest.approx(r1["test/acc"], abs=1e-3)
