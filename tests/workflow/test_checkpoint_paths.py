"""ckpt_path: a run directory for evaluation; `last` refuses to resume a different run."""
from __future__ import annotations

import json

import torch

from tests.workflow.conftest import FAST, train_cli


def test_eval_takes_a_run_directory_and_last_refuses_another_run(tmp_path):
    first = train_cli([*FAST], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    runs = tmp_path / "outputs" / "train" / "runs"
    (run,) = runs.iterdir()

    # Evaluation of a run directory tests its best checkpoint.
    ev = train_cli(["--config-name", "eval", f"ckpt_path={run}", "dataset.test_episodes=10"], cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr[-3000:]
    (ev_run,) = (tmp_path / "outputs" / "eval" / "runs").iterdir()
    assert json.loads((ev_run / "results.json").read_text())["ckpt"] == str(run / "checkpoints" / "best.ckpt")

    # The newest run is of another dataset (its stored config says so): `last` names the difference and refuses.
    last = run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    ckpt["metaft_config"]["dataset"]["_target_"] = "metaft.data.OmniglotDataModule"
    torch.save(ckpt, last)
    proc = train_cli([*FAST, "ckpt_path=last", "trainer.max_steps=8"], cwd=tmp_path)
    assert proc.returncode == 1
    out = proc.stdout + proc.stderr
    assert f"ckpt_path=last would resume {run}, a different run from this command's" in out
    assert "dataset._target_: metaft.data.OmniglotDataModule there, metaft.data.SinusoidDataModule in this command" in out
    assert f"name it: ckpt_path={run}" in out
    assert [p.name for p in runs.iterdir()] == [run.name]  # the refused command left no directory
    assert torch.load(last, weights_only=True)["global_step"] == 4  # nor trained the other run


def test_resuming_refuses_another_dataset_setting_and_meta_ckpt_takes_a_run_directory(tmp_path):
    first = train_cli([*FAST, "dataset.shots=5"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    (run,) = (tmp_path / "outputs" / "train" / "runs").iterdir()
    before = (run / "results.json").read_bytes()
    # The run continued on other data would no longer be the run its saved config describes.
    proc = train_cli([*FAST, f"ckpt_path={run}", "dataset.shots=10", "trainer.max_steps=8"], cwd=tmp_path)
    assert proc.returncode == 1
    assert "dataset.shots=10: resuming continues the run as it was trained (dataset.shots=5)" in proc.stdout + proc.stderr
    assert (run / "results.json").read_bytes() == before
    # Fine-tuning takes the run directory for its checkpoint, as ckpt_path does.
    ft = train_cli(["--config-name", "finetune", f"meta_ckpt={run}", "target=sinusoid", "trainer.max_steps=4",
                    "trainer.val_check_interval=2"], cwd=tmp_path)
    assert ft.returncode == 0, ft.stderr[-3000:]
    (ft_run,) = (tmp_path / "outputs" / "finetune" / "runs").iterdir()
    assert json.loads((ft_run / "results.json").read_text())["meta_ckpt"] == str(run / "checkpoints" / "best.ckpt")
