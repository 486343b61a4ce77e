"""Runs never share or overwrite a directory (``metaft.runtime.run_dirs``), and a failed or refused
command leaves a finished run's files as they were."""
from __future__ import annotations

import datetime
import hashlib
import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from metaft.runtime.run_dirs import KeepRuns

from .conftest import FAST, train_cli


def hydra_config(run_dir: Path, given: bool, ckpt_path: str | None = None, task: str = "train"):
    """The parts of a composed config the callback reads."""
    overrides = [f"hydra.run.dir={run_dir}"] if given else []
    return OmegaConf.create({"task_name": task, "ckpt_path": ckpt_path,
                             "hydra": {"run": {"dir": str(run_dir)}, "overrides": {"hydra": overrides}}})


def test_a_default_directory_taken_in_the_same_second_gets_a_suffix(tmp_path):
    d = tmp_path / "runs" / "2026-01-01_00-00-00"
    claimed = []
    for _ in range(3):  # three runs that resolved the same time stamp
        cfg = hydra_config(d, given=False)
        KeepRuns().on_run_start(cfg)
        claimed.append(Path(cfg.hydra.run.dir))
    assert [p.name for p in claimed] == [d.name, f"{d.name}_1", f"{d.name}_2"]
    assert all(p.is_dir() for p in claimed)


def test_a_named_directory_is_refused_only_when_it_holds_a_finished_run(tmp_path):
    d = tmp_path / "run"
    KeepRuns().on_run_start(hydra_config(d, given=True))  # new: fine
    d.mkdir()
    (d / "results.json").write_text(json.dumps({"status": "failed", "error": "x"}))
    KeepRuns().on_run_start(hydra_config(d, given=True))  # a failure record is what a rerun replaces
    (d / "results.json").write_text(json.dumps({"test/mse": 1.0}))
    with pytest.raises(SystemExit, match=f"hydra.run.dir={d} already holds a run.*ckpt_path=last"):
        KeepRuns().on_run_start(hydra_config(d, given=True))
    # Resuming that very run is what the directory is for; evaluating into it is not.
    KeepRuns().on_run_start(hydra_config(d, given=True, ckpt_path="last"))
    KeepRuns().on_run_start(hydra_config(d, given=True, ckpt_path=str(d / "checkpoints" / "last.ckpt")))
    with pytest.raises(SystemExit, match="already holds a run"):
        KeepRuns().on_run_start(hydra_config(d, given=True, ckpt_path=str(tmp_path / "other.ckpt")))
    with pytest.raises(SystemExit, match="already holds a run"):
        KeepRuns().on_run_start(hydra_config(d, given=True, ckpt_path=str(d / "checkpoints" / "best.ckpt"), task="eval"))


def digests(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*"))
            if p.is_file() and p.suffix != ".log"}


def test_refused_and_failed_commands_leave_a_finished_run_as_it_was(tmp_path):
    run = tmp_path / "run"
    first = train_cli([*FAST, f"hydra.run.dir={run}"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    before = digests(run)
    assert "results.json" in before and "checkpoints/last.ckpt" in before

    # A fresh run into it: refused before Hydra writes anything (.hydra/ included).
    again = train_cli([*FAST, "seed=3", f"hydra.run.dir={run}"], cwd=tmp_path)
    assert again.returncode == 1 and "already holds a run" in again.stderr
    assert digests(run) == before

    # A resume that changes the optimizer: refused, since the checkpoint's optimizer state wins.
    lr = train_cli([*FAST, "ckpt_path=last", "trainer.max_steps=8", "algorithm.optimizer.lr=0.5",
                    f"hydra.run.dir={run}"], cwd=tmp_path)
    assert lr.returncode == 1 and "algorithm.optimizer.lr=0.5: resuming restores the optimizer" in lr.stderr
    # A resume that fails on bad input: its error is recorded beside the finished run's results.
    bad = train_cli([*FAST, "ckpt_path=last", "trainer.max_steps=8", "algorithm.inner_lr=-1", f"hydra.run.dir={run}"],
                    cwd=tmp_path)
    assert bad.returncode == 1
    assert "algorithm.inner_lr must be > 0" in (run / "error.txt").read_text()
    after = digests(run)
    assert after["results.json"] == before["results.json"]
    assert {k: v for k, v in after.items() if k.startswith("checkpoints/")} == \
        {k: v for k, v in before.items() if k.startswith("checkpoints/")}

    # A sweep into a directory that holds a sweep's jobs is refused the same way.
    sweep = tmp_path / "sweep"
    (sweep / "0").mkdir(parents=True)
    (sweep / "0" / "results.json").write_text(json.dumps({"test/mse": 1.0}))
    multi = train_cli(["-m", "seed=1,2", *FAST, f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert multi.returncode == 1 and f"hydra.sweep.dir={sweep} already holds a sweep's runs" in multi.stderr
    assert sorted(p.name for p in sweep.iterdir()) == ["0"]


def test_a_sweep_whose_time_stamp_is_taken_runs_all_its_jobs_in_its_own_directory(tmp_path):
    """Another sweep has the directories of the coming minute: this one's jobs go to ``<stamp>_1``
    with its multirun.yaml (the launcher composes each job's directory again), the others stay."""
    now = datetime.datetime.now()
    taken = []
    for k in range(90):
        t = now + datetime.timedelta(seconds=k)
        job = tmp_path / "outputs" / "multirun" / f"{t:%Y-%m-%d}" / f"{t:%H-%M-%S}" / "0"
        job.mkdir(parents=True, exist_ok=True)
        (job / "results.json").write_text(json.dumps({"test/mse": 1.0}))
        taken.append(job.parent)
    proc = train_cli(["-m", "seed=1,2", *FAST], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ours = [d for d in (tmp_path / "outputs" / "multirun").glob("*/*") if d not in taken]
    assert len(ours) == 1 and ours[0].name.endswith("_1"), ours
    assert (ours[0] / "multirun.yaml").is_file()
    assert all((ours[0] / str(n) / "results.json").is_file() for n in (0, 1))
    assert all(sorted(p.name for p in d.iterdir()) == ["0"] for d in taken)


def test_a_sweep_continues_its_jobs_and_a_failure_after_the_results_is_marked(tmp_path):
    sweep = tmp_path / "sweep"
    assert train_cli(["-m", "seed=1,2", *FAST, f"hydra.sweep.dir={sweep}"], cwd=tmp_path).returncode == 0
    # ckpt_path=last: every job continues its own run in the named sweep directory.
    more = train_cli(["-m", "seed=1,2", *FAST, "trainer.max_steps=8", "ckpt_path=last", f"hydra.sweep.dir={sweep}"],
                     cwd=tmp_path)
    assert more.returncode == 0, more.stderr[-2000:]
    for n in (0, 1):
        assert torch.load(sweep / str(n) / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 8

    # A run that fails after writing its own results (an unknown optimized_metric) is marked
    # failed; only an earlier run's untouched results are kept.
    run = tmp_path / "run"
    proc = train_cli([*FAST, "optimized_metric=val/acc", f"hydra.run.dir={run}"], cwd=tmp_path)
    assert proc.returncode == 1 and "optimized_metric=val/acc is not a metric of this run" in proc.stderr
    assert json.loads((run / "results.json").read_text())["status"] == "failed"
