"""Fine-tuning's log says what it does with the checkpoint, and Lightning has nothing to warn about."""
from __future__ import annotations

import logging
import warnings

import torch

from metaft.models import MLP
from metaft.stages import main
from tests.finetune.conftest import FAST, MLP_CFG, save_ckpt


def test_a_run_directory_is_fine_tuned_from_and_no_module_is_left_in_eval_mode(run_config, tmp_path, caplog):
    run = tmp_path / "stage1"
    (run / "checkpoints").mkdir(parents=True)
    torch.manual_seed(0)
    ckpt = save_ckpt(run / "checkpoints" / "best.ckpt", MLP(), MLP_CFG)
    cfg = run_config("finetune", [f"meta_ckpt={run}", "target=sinusoid", *FAST], "ft")
    with caplog.at_level(logging.INFO), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(cfg)
    assert f"meta_ckpt={run}: fine-tuning from {ckpt}" in caplog.text
    assert "testing" not in caplog.text
    assert not [w for w in caught if "eval mode" in str(w.message)], [str(w.message) for w in caught]
