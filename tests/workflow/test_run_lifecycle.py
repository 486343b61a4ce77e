"""What a run says and leaves: its directory and results file printed, nothing left by a run that
never started, each traceback once, a validation at the end of every run."""
from __future__ import annotations

import json

from tests.workflow.conftest import FAST, train_cli


def test_a_run_prints_its_directory_and_results_and_validates_at_the_end(tmp_path):
    # 3 steps under a validation interval of 500: no validation would fall inside the run.
    proc = train_cli([*FAST, "trainer.max_steps=3", "trainer.val_check_interval=500"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = (tmp_path / "outputs" / "train" / "runs").iterdir()
    out = proc.stdout + proc.stderr
    assert f"run directory: {run.resolve()}" in out
    assert f"results: {run.resolve() / 'results.json'}" in out
    assert "trainer.val_check_interval=500 is more than the 3 steps this run trains: it validates once, at the end" \
        in out
    results = json.loads((run / "results.json").read_text())
    assert "val/mse" in results and results["ckpt"] and (run / "checkpoints" / "best.ckpt").is_file()
    assert out.count("validation at step 3") == 1
    # Lightning's lines once each; none of its hints that do not apply.
    assert out.count("Seed set to 0") == 1
    assert "litlogger" not in out and "srun" not in out and "LeafSpec" not in out
    # The test table in natural order: step 10 after step 2.
    lines = [line.split()[0] for line in out.splitlines() if line.startswith("  test/mse_step")]
    assert lines == ["test/mse_step0", "test/mse_step1"]


def test_a_last_step_on_the_validation_schedule_is_validated_once(tmp_path):
    proc = train_cli([*FAST, "test=false"], cwd=tmp_path)  # 4 steps, validated every 2
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert out.count("validation at step 2:") == 1 and out.count("validation at step 4:") == 1


def test_a_run_that_never_started_leaves_nothing_but_its_message(tmp_path):
    proc = train_cli([*FAST, "algorithm.inner_lr=-1"], cwd=tmp_path)
    assert proc.returncode == 1
    out = proc.stdout + proc.stderr
    assert out.count("algorithm.inner_lr must be > 0") == 1
    assert "Traceback" not in out
    assert not any((tmp_path / "outputs" / "train" / "runs").iterdir())


def test_a_run_that_fails_after_it_started_prints_its_traceback_once(tmp_path):
    proc = train_cli([*FAST, "optimized_metric=val/acc"], cwd=tmp_path)
    assert proc.returncode == 1
    assert (proc.stdout + proc.stderr).count("Traceback") == 1
    (run,) = (tmp_path / "outputs" / "train" / "runs").iterdir()
    assert "optimized_metric=val/acc" in (run / "error.txt").read_text()
    assert "Traceback" in (run / "train.log").read_text()  # the log keeps it


def test_a_sweep_prints_its_directory(tmp_path):
    proc = train_cli(["-m", "seed=1,2", *FAST, "test=false"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    out = proc.stdout + proc.stderr
    assert f"sweep directory: {sweep.relative_to(tmp_path)}" in out  # as given: relative to the working directory
    assert "sweep finished:" in out and "python -m metaft.report" in out


def test_the_local_launcher_reports_its_jobs_and_leaves_no_stray_folder(tmp_path):
    import pytest

    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    proc = train_cli(["-m", "hydra/launcher=local", "seed=1", *FAST, "test=false", f"hydra.sweep.dir={tmp_path}/s"],
                     cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert f"#0 done: {tmp_path}/s/0" in out
    assert not (tmp_path / "s" / ".submitit" / "%j").exists()
    assert not (tmp_path / ".submitit").exists()


def test_optuna_lines_carry_no_colour_codes(tmp_path):
    import pytest

    pytest.importorskip("optuna")
    proc = train_cli(["hparams_search=sinusoid_optuna", "hydra.sweeper.n_trials=1", *FAST, "trainer.max_steps=2",
                      f"hydra.sweep.dir={tmp_path}/s"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "A new study created" in out and "\x1b[" not in out
    assert f"sweep directory: {tmp_path}/s" in out
