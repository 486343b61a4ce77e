"""Progress by time as well as by steps, with the estimated time left; progress of long evaluations."""
from __future__ import annotations

import logging
from types import SimpleNamespace

import torch

import metaft.runtime.progress as progress
from metaft.runtime.progress import ProgressLog, duration


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def slow_trainer():
    dm = SimpleNamespace(val_episodes=100, test_episodes=1000)
    return SimpleNamespace(world_size=1, global_step=0, max_steps=3000, is_global_zero=True, sanity_checking=False,
                           callback_metrics={"train/loss": torch.tensor(1.0)}, val_check_batch=500,
                           num_val_batches=[1], num_test_batches=[10], datamodule=dm)


def test_a_slow_run_speaks_within_seconds_and_estimates_the_time_left(monkeypatch, caplog):
    clock = Clock()
    monkeypatch.setattr(progress.time, "perf_counter", clock)
    caplog.set_level(logging.INFO, logger="metaft.runtime.progress")
    cb = ProgressLog(every_n_steps=100, every_s=30, first_after_s=5)
    trainer, module, batch = slow_trainer(), SimpleNamespace(metric_name="acc"), SimpleNamespace(num_tasks=32)
    cb.on_train_start(trainer, module)
    for step in range(1, 6):  # 10 s per step: a line after the first, then every 30 s
        clock.t += 10.0
        trainer.global_step = step
        cb.on_train_batch_end(trainer, module, None, batch, step - 1)
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(" | ")[0] for line in lines] == ["step 1/3000", "step 4/3000"]
    # 2999 steps of 10 s are 8.3 h; no validation measured yet, so no test estimate either.
    assert lines[0].endswith("about 8.3 h left"), lines[0]

    cb.on_validation_start(trainer, module)
    clock.t += 60.0
    cb.on_validation_end(trainer, module)
    clock.t += 10.0
    trainer.global_step = 6
    cb.on_train_batch_end(trainer, module, None, batch, 5)
    # 2994 steps x 10 s + 6 validations x 60 s; the test has 10x the validation's batches: 10 min.
    assert caplog.records[-1].getMessage().endswith("about 8.4 h left (then the test, about 10.0 min)")


def test_a_long_test_reports_its_progress(monkeypatch, caplog):
    clock = Clock()
    monkeypatch.setattr(progress.time, "perf_counter", clock)
    caplog.set_level(logging.INFO, logger="metaft.runtime.progress")
    cb, trainer = ProgressLog(every_s=30, first_after_s=5), slow_trainer()
    cb.on_test_start(trainer, None)
    for i in range(10):
        clock.t += 24.0
        cb.on_test_batch_end(trainer, None, None, None, i)
    assert [r.getMessage() for r in caplog.records][:2] == ["test: batch 1/10, about 3.6 min left",
                                                           "test: batch 3/10, about 2.8 min left"]


def test_fine_tuning_reports_steps_per_second_not_zero_tasks(monkeypatch, caplog):
    clock = Clock()
    monkeypatch.setattr(progress.time, "perf_counter", clock)
    caplog.set_level(logging.INFO, logger="metaft.runtime.progress")
    cb = ProgressLog(every_n_steps=2)
    trainer = SimpleNamespace(world_size=1, global_step=0, max_steps=2, is_global_zero=True, sanity_checking=False,
                              callback_metrics={})
    cb.on_train_start(trainer, None)
    for step in (1, 2):
        clock.t += 0.25
        trainer.global_step = step
        cb.on_train_batch_end(trainer, None, None, (torch.zeros(2), torch.zeros(2)), step - 1)
    assert caplog.records[-1].getMessage() == "step 2/2 | 4.00 steps/s"


def test_durations_read_as_estimates():
    assert [duration(s) for s in (42, 210, 30000)] == ["42 s", "3.5 min", "8.3 h"]


def test_the_metrics_table_orders_steps_by_number():
    from metaft.runtime.progress import metrics_table

    rows = metrics_table({"test/mse_step10": 1.0, "test/mse_step2": 2.0, "test/mse": 3.0}).splitlines()
    assert [r.split()[0] for r in rows] == ["test/mse", "test/mse_step2", "test/mse_step10"]


def test_the_estimate_of_a_run_bounded_by_max_time_is_the_time_left(monkeypatch, caplog):
    from lightning.pytorch.callbacks import Timer

    class TwoMinutesLeft(Timer):
        def time_remaining(self, stage: str = "train") -> float:
            return 120.0

    clock = Clock()
    monkeypatch.setattr(progress.time, "perf_counter", clock)
    caplog.set_level(logging.INFO, logger="metaft.runtime.progress")
    cb, trainer = ProgressLog(every_n_steps=1), slow_trainer()
    trainer.max_steps, trainer.callbacks = 1_000_000, [TwoMinutesLeft(duration="00:00:05:00")]
    cb.on_train_start(trainer, None)
    clock.t, trainer.global_step = 10.0, 1
    cb.on_train_batch_end(trainer, None, None, SimpleNamespace(num_tasks=32), 0)
    # a million steps of 10 s would be years; trainer.max_time ends the run in 2 minutes
    assert caplog.records[-1].getMessage().endswith("about 2.0 min left"), caplog.records[-1].getMessage()
