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


def test_slurm_jobs_end_when_a_rank_fails(tmp_path):
    """The SLURM launcher runs its tasks with srun --kill-on-bad-exit=1."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra_plugins.metaft_sweep import SlurmLauncher

    launcher = SlurmLauncher.__new__(SlurmLauncher)
    launcher.params = {"submitit_folder": str(tmp_path), "timeout_min": 10, "tasks_per_node": 2, "nodes": 1}
    executor = launcher.executor()
    assert executor._executor.parameters["srun_args"] == ["--kill-on-bad-exit=1"]
