"""Sweeps on a real SLURM cluster: scripts/slurm_local.sh installs SLURM from the Debian packages
and starts a one-node cluster on this machine (with accounting); the tests submit sweeps through
``hydra/launcher=slurm``. Skipped, with the reason, only where SLURM cannot be installed."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from .conftest import FAST, ROOT, cli_env, train_cli

SCRIPT = ROOT / "scripts" / "slurm_local.sh"
# One CPU and little memory per job, so both jobs of a sweep run at once on a small machine.
SMALL = ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_per_cpu=1G",
         "hydra.launcher.timeout_min=10"]


def sh(*cmd: str, timeout: float = 60) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True).stdout


@pytest.fixture(scope="module")
def cluster():
    """A running local cluster; stopped afterwards unless it was already running before."""
    if not sys.platform.startswith("linux"):
        pytest.skip("SLURM test: needs Linux")
    if os.geteuid() != 0 and not shutil.which("sbatch"):
        pytest.skip("SLURM test: not root, so SLURM cannot be installed or started here")
    was_running = subprocess.run([str(SCRIPT), "status"], capture_output=True).returncode == 0
    t0 = time.monotonic()
    start = subprocess.run([str(SCRIPT), "start"], capture_output=True, text=True, timeout=300)
    if start.returncode in (3, 4):  # cannot install here / another cluster's config in /etc/slurm
        pytest.skip(f"SLURM test: {start.stderr.strip() or start.stdout.strip()}")
    assert start.returncode == 0, start.stdout + start.stderr
    print(f"\nlocal SLURM cluster ready in {time.monotonic() - t0:.1f} s")
    yield
    if not was_running:
        subprocess.run([str(SCRIPT), "stop"], capture_output=True, timeout=120)


def slurm_job_id(job_dir: Path) -> str:
    """The SLURM job id Hydra recorded for the job (``hydra.job.id``, from submitit)."""
    return str(yaml.safe_load((job_dir / ".hydra" / "hydra.yaml").read_text())["hydra"]["job"]["id"])


def sacct_state(job_id: str) -> str:
    # Accounting is written asynchronously; give slurmdbd a moment to record the end.
    for _ in range(50):
        state = sh("sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id).strip()
        if state and state not in ("RUNNING", "PENDING", "COMPLETING"):
            return state
        time.sleep(0.2)
    return state


def test_two_job_sweep_runs_under_slurm(cluster, tmp_path):
    t0 = time.monotonic()
    proc = train_cli(["-m", "seed=1,2", *SMALL, *FAST, f"hydra.sweep.dir={tmp_path}"], cwd=tmp_path, timeout=240)
    print(f"two-job SLURM sweep: {time.monotonic() - t0:.1f} s")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    ids = set()
    for num, seed in ((0, 1), (1, 2)):
        job = tmp_path / str(num)
        res = json.loads((job / "results.json").read_text())
        assert f"seed={seed}" in res["overrides"] and math.isfinite(res["test/mse"])
        job_id = slurm_job_id(job)
        ids.add(job_id)
        # The job's own submitit log says where it ran, and SLURM's accounting knows the job.
        log = (tmp_path / ".submitit" / job_id / f"{job_id}_0_log.out").read_text()
        assert f"JobEnvironment(job_id={job_id}," in log
        assert sacct_state(job_id) == "COMPLETED"
    assert len(ids) == 2


def test_cancelled_job_is_reported_failed(cluster, tmp_path):
    """scancel one job of a sweep while it runs: the sweep ends (no hang), the other job's
    results stay, and the cancelled job is reported failed in the summary and in its directory."""
    t0 = time.monotonic()
    sweep = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), "-m", *SMALL, *FAST, "trainer.max_steps=4,100000",
         f"hydra.sweep.dir={tmp_path}"], cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    job_id = None
    try:
        deadline = time.monotonic() + 120
        while job_id is None and time.monotonic() < deadline and sweep.poll() is None:
            folders = list((tmp_path / ".submitit").glob("*_1"))  # array task 1: the long job
            if folders and sh("squeue", "-h", "-o", "%T", "-j", folders[0].name).strip() == "RUNNING":
                job_id = folders[0].name
            time.sleep(0.5)
        assert job_id is not None, "the long job never started"
        sh("scancel", job_id)
        cancelled_at = time.monotonic()
        out, err = sweep.communicate(timeout=150)
        print(f"sweep ended {time.monotonic() - cancelled_at:.1f} s after scancel ({time.monotonic() - t0:.1f} s in all)")
    finally:
        if sweep.poll() is None:
            sweep.kill()
            out, err = sweep.communicate()
        for folder in (tmp_path / ".submitit").glob("*_*"):  # leave no job of this sweep behind
            subprocess.run(["scancel", folder.name], capture_output=True)

    assert sweep.returncode == 1, out[-2000:] + err[-3000:]
    assert "1 of 2 jobs failed" in err and f"slurm job {job_id} ended as CANCELLED" in err
    assert math.isfinite(json.loads((tmp_path / "0" / "results.json").read_text())["test/mse"])
    failed = json.loads((tmp_path / "1" / "results.json").read_text())
    assert failed["status"] == "failed" and "CANCELLED" in failed["error"]
    assert "trainer.max_steps=100000" in (tmp_path / "1" / "error.txt").read_text()
    assert sacct_state(job_id).startswith("CANCELLED")


def test_start_again_keeps_the_running_daemons(cluster):
    state = Path(os.environ.get("METAFT_SLURM_DIR", "/var/lib/metaft-slurm"))
    names = ("mariadbd", "slurmdbd", "slurmctld", "slurmd")
    before = {n: (state / "run" / f"{n}.pid").read_text().strip() for n in names}
    sh(str(SCRIPT), "start", timeout=120)
    assert {n: (state / "run" / f"{n}.pid").read_text().strip() for n in names} == before
    assert subprocess.run([str(SCRIPT), "status"], capture_output=True).returncode == 0
    assert sh("sinfo", "-h", "-o", "%T").strip() in ("idle", "mixed", "allocated")


def test_data_parallel_job_under_slurm_is_the_one_process_run(cluster, tmp_path):
    """hardware=ddp_cpu through the SLURM launcher: SLURM's two tasks are the two ranks (none
    spawns another), the sweep ends, and the result is the one-process run's (the meta-batch is
    split across ranks and the meta-gradient averaged)."""
    run = ["hardware=ddp_cpu", "dataset.meta_batch_size=8", "trainer.max_steps=6", "trainer.val_check_interval=3",
           "dataset.val_episodes=10", "dataset.test_episodes=10", "seed=1", "progress=log"]
    proc = train_cli(["-m", *SMALL, *run, f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    job = tmp_path / "sweep" / "0"
    job_id = slurm_job_id(job)
    folder = tmp_path / "sweep" / ".submitit" / job_id
    assert sorted(p.name for p in folder.glob("*_log.out")) == [f"{job_id}_0_log.out", f"{job_id}_1_log.out"]
    for task in (0, 1):  # each SLURM task is exactly one rank of two: none started another
        text = (folder / f"{job_id}_{task}_log.out").read_text() + (folder / f"{job_id}_{task}_log.err").read_text()
        assert [line.split("distributed: ", 1)[1] for line in text.splitlines() if "Initializing distributed" in line] \
            == [f"GLOBAL_RANK: {task}, MEMBER: {task + 1}/2"]
    assert sacct_state(job_id) == "COMPLETED"
    single = ["hardware=cpu" if o == "hardware=ddp_cpu" else o for o in run]
    alone = train_cli([*single, f"hydra.run.dir={tmp_path / 'alone'}"], cwd=tmp_path)
    assert alone.returncode == 0, alone.stderr[-3000:]
    want = json.loads((tmp_path / "alone" / "results.json").read_text())["test/mse"]
    assert json.loads((job / "results.json").read_text())["test/mse"] == pytest.approx(want, rel=1e-5)


def test_request_the_cluster_can_never_meet_fails_at_once(cluster, tmp_path):
    """Two ranks of 64 CPUs each on a node of two would pend forever: the sweep fails at once,
    naming the resources asked for, and leaves no job pending."""
    t0 = time.monotonic()
    proc = train_cli(["-m", "hydra/launcher=slurm", "hardware=ddp_cpu", "hydra.launcher.cpus_per_task=64", *FAST, f"hydra.sweep.dir={tmp_path}"], cwd=tmp_path, timeout=120)
    assert proc.returncode != 0
    assert "can never start" in proc.stderr and "cpus_per_task=64" in proc.stderr
    assert time.monotonic() - t0 < 60
    assert not sh("squeue", "-h").strip()  # nothing left pending
