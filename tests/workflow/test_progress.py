"""Plain progress lines for non-interactive runs; the bar on a terminal."""
from __future__ import annotations

import logging
import re
from types import SimpleNamespace

import pytest
import torch

import metaft.runtime.progress as progress
from metaft.runtime.progress import ProgressLog, progress_callbacks
from metaft.stages.meta import make_trainer
from metaft.stages import main

FAST = ["trainer.max_steps=4", "trainer.val_check_interval=2", "dataset.meta_batch_size=4",
        "dataset.val_episodes=10", "dataset.test_episodes=10"]


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_lines_report_throughput_without_validation_time(monkeypatch, caplog):
    clock = Clock()
    monkeypatch.setattr(progress.time, "perf_counter", clock)
    caplog.set_level(logging.INFO, logger="metaft.runtime.progress")
    cb = ProgressLog(every_n_steps=2)
    trainer = SimpleNamespace(world_size=2, global_step=0, max_steps=4, is_global_zero=True, sanity_checking=False,
                              callback_metrics={"train/loss": torch.tensor(0.25)})
    module = SimpleNamespace(metric_name="mse")
    batch = SimpleNamespace(num_tasks=4)  # this rank's share; 8 tasks per step over 2 ranks

    cb.on_train_start(trainer, module)
    for step in (1, 2):
        clock.t += 0.5
        trainer.global_step = step
        cb.on_train_batch_end(trainer, module, None, batch, step - 1)
    cb.on_validation_start(trainer, module)
    clock.t += 10.0  # a long validation must not lower the training throughput
    trainer.callback_metrics.update({"val/mse": torch.tensor(0.5), "val/mse_ci95": torch.tensor(0.125)})
    cb.on_validation_end(trainer, module)
    for step in (3, 4):
        clock.t += 0.5
        trainer.global_step = step
        cb.on_train_batch_end(trainer, module, None, batch, step - 1)

    assert [r.getMessage() for r in caplog.records] == [
        "step 2/4 | 16.0 tasks/s | train/loss 0.25",  # 2 steps x 8 tasks in 1 s
        "validation at step 2: val/mse 0.5 +- 0.125",
        "step 4/4 | 16.0 tasks/s | train/loss 0.25 | val/mse 0.5 (step 2)",
    ]


def test_other_ranks_stay_quiet(caplog):
    caplog.set_level(logging.INFO, logger="metaft.runtime.progress")
    cb = ProgressLog(every_n_steps=1)
    trainer = SimpleNamespace(world_size=2, global_step=1, max_steps=4, is_global_zero=False, sanity_checking=False,
                              callback_metrics={})
    cb.on_train_start(trainer, None)
    cb.on_train_batch_end(trainer, None, None, SimpleNamespace(num_tasks=4), 0)
    assert caplog.records == []


def test_training_logs_every_n_steps(run_config, caplog):
    caplog.set_level(logging.INFO, logger="metaft.runtime.progress")
    cfg = run_config("train", [*FAST, "progress=log", "progress_every_n_steps=2"])
    main(cfg)
    lines = [r.getMessage() for r in caplog.records if r.name == "metaft.runtime.progress"]
    steps = [line for line in lines if line.startswith("step ")]
    assert [s.split(" | ")[0] for s in steps] == ["step 2/4", "step 4/4"]
    assert re.fullmatch(r"step 4/4 \| [\d.]+ tasks/s \| train/loss [\d.e+-]+ \| val/mse [\d.e+-]+ \(step 2\)", steps[1])
    assert len([line for line in lines if line.startswith("validation at step")]) == 2


@pytest.mark.parametrize("mode, tty, bar", [("bar", False, True), ("log", True, False), ("auto", True, True),
                                            ("auto", False, False)])
def test_switch_picks_bar_or_lines(run_config, tmp_path, monkeypatch, mode, tty, bar):
    monkeypatch.setattr(progress, "interactive", lambda: tty)
    trainer = make_trainer(run_config("train", [f"progress={mode}"]), tmp_path)
    assert (trainer.progress_bar_callback is not None) == bar
    assert any(isinstance(c, ProgressLog) for c in trainer.callbacks) == (not bar)


def test_bad_values_say_what_to_change(run_config):
    with pytest.raises(ValueError, match="progress='spinner' is not one of auto, bar, log"):
        progress_callbacks(run_config("train", ["progress=spinner"]))
    with pytest.raises(ValueError, match="progress_every_n_steps must be >= 1"):
        progress_callbacks(run_config("train", ["progress=log", "progress_every_n_steps=0"]))
