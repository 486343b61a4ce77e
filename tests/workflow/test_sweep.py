"""Sweeps through ``train.py -m``: every job runs and keeps its overrides; a failed job leaves its
error in its directory, does not stop the others, and the sweep ends non-zero with a summary.
Also: a failing single run, the Optuna search presets, the local submitit launcher, and how the
SLURM preset turns ``hardware`` into resources."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from metaft.report import report, t975

from .conftest import FAST, ROOT, train_cli

BAD = "algorithm.inner_lr must be > 0, got -1"


def results(job: Path) -> dict:
    return json.loads((job / "results.json").read_text())


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Two seeds x a good and a bad inner lr: jobs 0 and 2 train, jobs 1 and 3 fail."""
    d = tmp_path_factory.mktemp("sweep")
    proc = train_cli(["-m", "seed=1,2", "algorithm.inner_lr=0.05,-1", *FAST, f"hydra.sweep.dir={d}"], cwd=d)
    return d, proc


def test_every_job_runs_and_failures_are_summarised(sweep):
    d, proc = sweep
    assert proc.returncode == 1, proc.stderr[-3000:]
    for num, seed in ((0, "1"), (2, "2")):
        res = results(d / str(num))
        assert f"seed={seed}" in res["overrides"] and "algorithm.inner_lr=0.05" in res["overrides"]
        assert math.isfinite(res["test/mse"]) and res["test/episodes"] == 10
        # results.json carries exactly the job's own overrides
        assert res["overrides"] == yaml.safe_load((d / str(num) / ".hydra" / "overrides.yaml").read_text())
    for num in (1, 3):
        job = d / str(num)
        assert results(job)["status"] == "failed" and BAD in results(job)["error"]
        error = (job / "error.txt").read_text()
        assert "algorithm.inner_lr=-1" in error and "Traceback" in error and BAD in error
        assert "Traceback" in (job / "train.log").read_text()  # also in the job's own log
        assert not (job / "checkpoints").exists()
    assert "2 of 4 jobs failed" in proc.stderr
    assert str(d / "1" / "error.txt") in proc.stderr and str(d / "3" / "error.txt") in proc.stderr
    assert (d / "failed_jobs.txt").read_text().strip() in proc.stderr


def test_report_on_a_real_sweep(sweep, tmp_path):
    d, _ = sweep
    text = report(d, out=tmp_path)
    good = [results(d / "0")["test/mse"], results(d / "2")["test/mse"]]
    mean = (good[0] + good[1]) / 2
    ci = t975(1) * abs(good[0] - good[1]) / math.sqrt(2) / math.sqrt(2)  # s = |a - b| / sqrt(2)
    rows = (tmp_path / "report_groups.csv").read_text().splitlines()
    assert rows[1].startswith("algorithm.inner_lr=0.05,2,0,")
    assert rows[2].startswith("algorithm.inner_lr=-1,0,2,")
    values = [float(v) for v in rows[1].split(",")[3:5]]
    assert values == [pytest.approx(mean), pytest.approx(ci)]
    assert "4 runs (2 failed) in 2 groups" in text


def test_single_run_error_exits_nonzero_with_the_message(tmp_path):
    proc = train_cli(["algorithm.inner_lr=-1", *FAST, f"hydra.run.dir={tmp_path}"], cwd=tmp_path)
    assert proc.returncode == 1
    assert BAD in proc.stderr
    assert BAD in (tmp_path / "error.txt").read_text()


def test_optuna_preset_returns_the_configured_metric(tmp_path):
    proc = train_cli(["hparams_search=sinusoid_optuna", "hydra.sweeper.n_trials=2", *FAST,
                      "trainer.max_steps=2", f"hydra.sweep.dir={tmp_path}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    best = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    trials = [results(tmp_path / str(i)) for i in range(2)]
    assert not any(k.startswith("test/") for t in trials for k in t)  # trials select on validation only
    winner = min(trials, key=lambda t: t["val/mse"])
    assert best["best_value"] == pytest.approx(winner["val/mse"])  # train.py returned val/mse
    params = dict(o.split("=", 1) for o in winner["overrides"] if o.split("=", 1)[0] in best["best_params"])
    assert {k: float(v) for k, v in params.items()} == pytest.approx(best["best_params"])
    assert set(best["best_params"]) == {"algorithm.inner_lr", "algorithm.optimizer.lr", "algorithm.inner_steps"}
    assert 0.001 <= best["best_params"]["algorithm.inner_lr"] <= 1.0
    assert best["best_params"]["algorithm.inner_steps"] in range(1, 5)


def test_optuna_study_goes_on_after_a_failed_trial(tmp_path):
    # Seed 0 of the random sampler draws -1 then 1: one trial fails, the next trains. (Optuna 2.10's
    # grid sampler calls study.stop() when the grid is used up, which the sweeper's ask/tell loop
    # turns into an error whenever the failing trial comes last.)
    proc = train_cli(["-m", "hydra/sweeper=optuna", "hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=0",
                      "hydra.sweeper.n_trials=2", "hydra.sweeper.max_failure_rate=1.0",
                      "optimized_metric=val/mse", "test=false", "algorithm.inner_steps=choice(1,-1)", *FAST,
                      f"hydra.sweep.dir={tmp_path}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    by_steps = {next(o for o in results(tmp_path / str(i))["overrides"] if "inner_steps" in o): results(tmp_path / str(i))
                for i in range(2)}
    assert by_steps["algorithm.inner_steps=-1"]["status"] == "failed"
    assert "inner_steps" in (tmp_path / str(list(by_steps).index("algorithm.inner_steps=-1")) / "error.txt").read_text()
    best = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(by_steps["algorithm.inner_steps=1"]["val/mse"])


def test_omniglot_preset_maximises_validation_accuracy(run_config):
    if not (ROOT / "conf" / "dataset" / "omniglot.yaml").is_file():
        pytest.skip("conf/dataset/omniglot.yaml is not in this checkout")
    cfg = run_config("train", ["hparams_search=omniglot_optuna"])
    assert cfg.optimized_metric == "val/acc" and cfg.hydra.sweeper.direction == "maximize"
    assert cfg.model._target_.endswith("Conv4") and "inner_lr" in str(cfg.hydra.sweeper.params)


def test_local_launcher_waits_for_all_jobs_and_keeps_failures(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    proc = train_cli(["-m", "hydra/launcher=local", "algorithm.inner_lr=0.05,-1", *FAST, f"hydra.sweep.dir={tmp_path}"],
                     cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert math.isfinite(results(tmp_path / "0")["test/mse"])
    assert results(tmp_path / "1")["status"] == "failed" and BAD in (tmp_path / "1" / "error.txt").read_text()
    assert "1 of 2 jobs failed" in proc.stderr
    assert list((tmp_path / ".submitit").glob("*/*_log.out"))  # ran as submitit jobs


# ----------------------------------------------------------------------- SLURM resources
def launcher(run_config, overrides: list[str]):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra.utils import instantiate

    cfg = run_config("train", ["hydra/launcher=slurm", *overrides])
    return instantiate(cfg.hydra.launcher)


def sbatch_text(launcher_) -> str:
    # submitit's own rendering of the batch script it would submit
    return launcher_.executor()._executor._make_submission_file_text("python job.py", "uid")


def test_slurm_preset_follows_the_hardware(run_config, tmp_path):
    gpu = launcher(run_config, ["hardware=gpu", "trainer.devices=4", "hydra.launcher.partition=gpu",
                                "hydra.launcher.account=proj", f"hydra.sweep.dir={tmp_path}"])
    text = sbatch_text(gpu)
    for line in ("--gpus-per-node=4", "--ntasks-per-node=4", "--nodes=1", "--cpus-per-task=2", "--mem-per-cpu=2G",
                 "--time=240", "--partition=gpu", "--account=proj"):
        assert f"#SBATCH {line}" in text, line
    cpu = launcher(run_config, ["hardware=cpu", f"hydra.sweep.dir={tmp_path}"])
    assert "--ntasks-per-node=1" in sbatch_text(cpu) and "gpus" not in sbatch_text(cpu)


def test_slurm_preset_needs_a_device_count(run_config, tmp_path):
    with pytest.raises(Exception, match="trainer.devices='auto' cannot be turned into SLURM resources"):
        launcher(run_config, ["hardware=gpu", "trainer.devices=auto", f"hydra.sweep.dir={tmp_path}"])


def test_optimized_metric_must_be_a_metric_of_the_run(run_config):
    from metaft.stages import main

    cfg = run_config("train", [*FAST, "test=false", "optimized_metric=val/acc"])  # sinusoid has val/mse
    with pytest.raises(ValueError, match="optimized_metric=val/acc is not a metric of this run; use one of: .*val/mse"):
        main(cfg)
