"""Fine-tuning records its starting point: the validation before training, at step 0."""
from __future__ import annotations

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.workflow.conftest import FAST, train_cli


def test_fine_tuning_logs_the_starting_points_validation_at_step_0(tmp_path):
    assert train_cli([*FAST], cwd=tmp_path).returncode == 0
    (run,) = (tmp_path / "outputs" / "train" / "runs").iterdir()
    proc = train_cli(["--config-name", "finetune", f"meta_ckpt={run}/checkpoints/best.ckpt", "target=sinusoid",
                      "trainer.max_steps=4", "trainer.val_check_interval=2", "progress=log"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "before training (the starting point): val/loss" in proc.stdout + proc.stderr
    (ft,) = (tmp_path / "outputs" / "finetune" / "runs").iterdir()
    ea = EventAccumulator(str(ft / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    assert [e.step for e in ea.Scalars("val/mse")][0] == 0
    assert len(ea.Scalars("val/mse")) >= 3  # the start, then the curve
