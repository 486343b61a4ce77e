"""A checkpoint is never scored on classes of another Omniglot split (whose training classes
overlap the held-out ones): evaluation and fine-tuning refuse, naming both splits. No data is
read: the refusal comes from the stored config, before any dataset is built."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from metaft.data.omniglot.splits import check_held_out, held_out_split

OMNIGLOT = {"_target_": "metaft.data.OmniglotDataModule", "split": "vinyals"}
RUNS = {"_target_": "metaft.data.OmniglotRunsDataModule"}


def _fake_checkpoint(path: Path, dataset: dict) -> Path:
    """A checkpoint file holding only a stored config (the refusal must come before its weights)."""
    torch.save({"state_dict": {}, "metaft_config": {"dataset": dataset, "seed": 0}}, path)
    return path


def test_tested_split_of_each_dataset():
    assert held_out_split(OMNIGLOT) == "vinyals" and held_out_split({**OMNIGLOT, "split": None}) == "vinyals"
    assert held_out_split({**OMNIGLOT, "split": "lake"}) == "lake"
    assert held_out_split(RUNS) == "lake"  # the runs are drawn from images_evaluation
    assert held_out_split({"_target_": "metaft.data.SinusoidDataModule"}) is None and held_out_split(None) is None


@pytest.mark.parametrize("trained, tested, refused", [
    ("vinyals", "lake", True), ("lake", "vinyals", True), ("vinyals", "vinyals", False), ("lake", "lake", False)])
def test_check_held_out(trained, tested, refused):
    if refused:
        with pytest.raises(ValueError, match=f"split={trained}.*split={tested}"):
            check_held_out({**OMNIGLOT, "split": trained}, tested, "here", "fix")
    else:
        check_held_out({**OMNIGLOT, "split": trained}, tested, "here", "fix")
    check_held_out({"_target_": "metaft.data.SinusoidDataModule"}, tested, "here", "fix")  # not Omniglot


@pytest.mark.parametrize("override", [["dataset=omniglot_runs"], ["++dataset.split=lake"]])
def test_eval_refuses_a_vinyals_checkpoint_on_lake_classes(run_config, tmp_path, override):
    from metaft.stages import main

    ckpt = _fake_checkpoint(tmp_path / "vinyals.ckpt", {**OMNIGLOT, "data_dir": str(tmp_path / "nowhere")})
    cfg = run_config("eval", [f"ckpt_path={ckpt}", *override], "eval")
    with pytest.raises(ValueError, match=r"dataset.split=vinyals.*split=lake.*dataset.split=lake"):
        main(cfg)
