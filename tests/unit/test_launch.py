"""Data parallel under SLURM: the tasks are the ranks, so the strategy must not spawn; elsewhere
the ``spawn`` preset spawns."""
from __future__ import annotations

import pytest
from lightning.fabric.plugins.environments import LightningEnvironment, SLURMEnvironment
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher

from metaft.runtime.distributed import MetaDDPStrategy

SLURM_TASK = {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "1",
              "SLURM_NODEID": "0", "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "42", "SLURM_NODELIST": "node1"}


def _strategy(env) -> MetaDDPStrategy:
    strategy = MetaDDPStrategy(start_method="spawn", process_group_backend="gloo", cluster_environment=env)
    strategy._configure_launcher()
    return strategy


def test_spawns_without_a_cluster():
    assert isinstance(_strategy(LightningEnvironment()).launcher, _MultiProcessingLauncher)


def test_a_slurm_task_is_a_rank_and_spawns_nothing(monkeypatch):
    for k, v in SLURM_TASK.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr("lightning.fabric.plugins.environments.slurm._is_srun_used", lambda: True)
    assert SLURMEnvironment.detect()
    env = SLURMEnvironment()
    strategy = _strategy(env)
    assert strategy.launcher is None
    assert (env.global_rank(), env.world_size()) == (1, 2)


def test_slurm_jobs_end_when_a_rank_fails(tmp_path, monkeypatch):
    """The SLURM launcher runs its tasks with srun --kill-on-bad-exit=1."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    import submitit.slurm.slurm as submitit_slurm

    from hydra_plugins.metaft_sweep import SlurmLauncher

    # submitit probes a live cluster (srun) when the executor is made; only its arguments are checked here
    monkeypatch.setattr(submitit_slurm.SlurmExecutor, "affinity", staticmethod(lambda: 1))

    launcher = SlurmLauncher.__new__(SlurmLauncher)
    launcher.params = {"submitit_folder": str(tmp_path), "timeout_min": 10, "tasks_per_node": 2, "nodes": 1}
    executor = launcher.executor()
    assert executor._executor.parameters["srun_args"] == ["--kill-on-bad-exit=1"]


def test_a_request_slurm_can_never_meet_fails_at_once_naming_it(monkeypatch):
    """A job pending for a per-job limit (not for busy nodes) is cancelled and the sweep told
    which resources were asked for; a busy cluster is waited for."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    import subprocess
    import types

    import hydra_plugins.metaft_sweep as ms

    calls = []

    class Job:
        job_id = "77_0"

        def __init__(self) -> None:
            self.polls = 0

        def done(self) -> bool:
            self.polls += 1
            return self.polls > 3

        def wait(self) -> None:
            calls.append("wait")

    def fake_run(cmd, **kw):
        calls.append(cmd[0])
        out = reasons.pop(0) if cmd[0] == "squeue" else ""
        return types.SimpleNamespace(returncode=0, stdout=out)

    monkeypatch.setattr(subprocess, "run", fake_run)
    launcher = ms.SlurmLauncher.__new__(ms.SlurmLauncher)
    launcher.params = {"nodes": 1, "tasks_per_node": 2, "gpus_per_node": 16, "partition": "gpu", "timeout_min": 60}
    reasons = ["Priority\n", "Resources\n", "None\n"]  # busy, then running: waited for
    launcher._wait(Job(), poll_s=0)
    assert calls[-1] == "wait" and "scancel" not in calls
    calls.clear()
    reasons = ["Resources\n", "PartitionConfig\n"]
    with pytest.raises(RuntimeError, match=r"77_0 can never start \(PartitionConfig\).*gpus_per_node=16.*partition=gpu"):
        launcher._wait(Job(), poll_s=0)
    assert calls == ["squeue", "squeue", "scancel"]
    assert ms.never_runs("QOSMaxGRESPerJob") and ms.never_runs("PartitionNodeLimit") and not ms.never_runs("Resources")


def test_only_rank_zero_writes_the_results(tmp_path, monkeypatch):
    """Under SLURM or torchrun every rank runs the stage to its end: one results.json, rank 0's."""
    from lightning.pytorch.utilities import rank_zero_only

    from metaft.runtime.trainer import write_results

    monkeypatch.setattr(rank_zero_only, "rank", 1)
    assert write_results(tmp_path, {"test/acc": 50.0})["test/acc"] == 50.0
    assert not (tmp_path / "results.json").exists()
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    write_results(tmp_path, {"test/acc": 50.0})
    assert (tmp_path / "results.json").is_file()
