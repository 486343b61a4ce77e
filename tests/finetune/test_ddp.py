"""Data-parallel fine-tuning on the CPU (2 gloo processes) reproduces the 1-process run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from metaft.stages import main


def test_two_ranks_give_the_one_rank_fine_tuning(run_config, mlp_ckpt, tmp_path):
    # 5 training points per step: uneven shares (3 + 2), which the global-batch normalisation handles.
    common = [f"meta_ckpt={mlp_ckpt}", "target.shots=5", "target.batch_size=5", "finetuner.optimizer.lr=0.01",
              "trainer.max_steps=6", "trainer.val_check_interval=3", "early_stopping.patience=0",
              "progress=log", "seed=2", "test=false"]
    runs = {}
    for hw in ("cpu", "ddp_cpu"):
        cfg = run_config("finetune", [*common, f"hardware={hw}"], hw)
        main(cfg)
        out = Path(cfg.hydra.runtime.output_dir)
        runs[hw] = (torch.load(out / "checkpoints" / "last.ckpt", weights_only=True),
                    json.loads((out / "results.json").read_text()))
    (one, r1), (two, r2) = runs["cpu"], runs["ddp_cpu"]
    assert one["global_step"] == two["global_step"] == 6
    start = torch.load(mlp_ckpt, weights_only=True)["state_dict"]
    diff = max((one["state_dict"][k] - two["state_dict"][k]).abs().max().item() for k in one["state_dict"])
    moved = max((one["state_dict"][k] - start[k]).abs().max().item() for k in one["state_dict"])
    print(f"fine-tune: max |w_1rank - w_2ranks| after 6 steps = {diff:.3g} (weights moved {moved:.3g})")
    assert moved > 1e-3 and diff < 1e-5
    # The sharded evaluation (same code path as the test) counts every point once, same metric.
    assert r1["val/examples"] == r2["val/examples"] == 20
    assert r2["val/mse"] == pytest.approx(r1["val/mse"], rel=1e-4)
    # One run directory per run, none per rank.
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["cpu", "ddp_cpu"]


@pytest.mark.slow  # two fine-tuning runs, one of them 2 spawned processes (~50 s on a busy 2-core machine)
def test_two_ranks_give_the_one_rank_fine_tuning_on_conv4(run_config, conv_ckpt, image_folder, tmp_path):
    """Conv4 has batch norm: each rank's share of a batch is normalised with the whole batch's
    statistics, and evaluation does not depend on the number of ranks (the same test numbers)."""
    # 9 training images, batches of 5: uneven shares (3 + 2); 9 test images in batches of 4.
    common = [f"meta_ckpt={conv_ckpt}", "target=folder", f"target.root={image_folder}", "target.shots=3",
              "target.val_per_class=2", "target.test_per_class=3", "target.batch_size=5", "target.eval_batch_size=4",
              # SGD: Adam would turn the rounding noise of the conv biases' zero gradient (batch norm
              # cancels them) into full-size steps of either sign.
              "finetuner.optimizer._target_=torch.optim.SGD", "finetuner.optimizer.lr=0.5", "trainer.max_steps=4", "trainer.val_check_interval=2",
              "early_stopping.patience=0", "progress=log", "seed=1"]
    runs = {}
    for hw in ("cpu", "ddp_cpu"):
        cfg = run_config("finetune", [*common, f"hardware={hw}"], f"conv_{hw}")
        main(cfg)
        out = Path(cfg.hydra.runtime.output_dir)
        runs[hw] = (torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"],
                    json.loads((out / "results.json").read_text()))
    (one, r1), (two, r2) = runs["cpu"], runs["ddp_cpu"]
    start = torch.load(conv_ckpt, weights_only=True)["state_dict"]
    diff = max((one[k] - two[k]).abs().max().item() for k in one)
    moved = max((one[k] - start[k]).abs().max().item() for k in one if k in start and not k.startswith("net.head"))
    # Float rounding only (per-rank batch norm: differences of the size of the steps themselves).
    assert moved > 0.1 and diff < 1e-3, (moved, diff)
    assert r1["test/examples"] == r2["test/examples"] == 9
    for k in ("val/acc", "val/loss", "test/acc", "test/loss"):
        assert r2[k] == pytest.approx(r1[k], rel=1e-3), k
