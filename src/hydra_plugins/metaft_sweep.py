"""metaft's Hydra plugins: a sweeper that survives failed jobs and submitit launchers that
wait for every job (see ``metaft.runtime.sweep`` for how failures are recorded)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from omegaconf import OmegaConf, open_dict

from metaft.runtime.sweep import ERROR_FILE, SweepFailed, failure_summary, record_failure

log = logging.getLogger(__name__)


class ContinueSweeper(BasicSweeper):
    """Hydra's basic sweeper (same grid, batches and ``hydra.sweeper.params``), except that a
    failed job does not end the sweep: every job runs, then the sweep fails with one summary
    of all failed jobs (also written to ``failed_jobs.txt`` in the sweep directory)."""

    def sweep(self, arguments: list[str]) -> list[Sequence[JobReturn]]:
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides(self._parse_config() + list(arguments))
        self.overrides = self.split_arguments(overrides, self.max_batch_size)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        returns: list[Sequence[JobReturn]] = []
        num = 0
        while not self.is_done():
            batch = self.get_job_batch()
            self.validate_batch_is_legal(batch)  # a config error stops the sweep before any job runs
            returns.append(self.launcher.launch(batch, initial_job_idx=num))
            num += len(batch)
        failed = [r for rs in returns for r in rs if r.status != JobStatus.COMPLETED]
        if failed:
            from metaft.runtime.io import atomic_write_text  # late: plugin discovery stays light

            summary = failure_summary(failed, num)
            atomic_write_text(sweep_dir / "failed_jobs.txt", summary + "\n")
            raise SweepFailed(summary)
        return returns


# ---------------------------------------------------------------------------------- submitit
try:
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher as _Local
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as _Slurm
except ImportError:  # the `sweep` extra is not installed; the configs that need it say so
    _Local = _Slurm = None  # type: ignore[assignment,misc]


# SLURM reasons for a pending job that waiting cannot cure: the request exceeds what the partition
# or the account may ever give one job (squeue's %r; "Resources" or "Priority" only mean "busy").
_NEVER = ("PartitionNodeLimit", "PartitionTimeLimit", "PartitionConfig", "BadConstraints")
_RESOURCES = ("nodes", "tasks_per_node", "gpus_per_node", "cpus_per_task", "mem_per_cpu", "mem_gb", "timeout_min",
              "partition", "account", "qos", "constraint")


def never_runs(reason: str) -> bool:
    """Whether a pending job's SLURM reason says it can never start (limits per job, not load)."""
    return reason.startswith(_NEVER) or reason.endswith("PerJob") or "PerJob," in reason


def pending_reason(job_id: str) -> str:
    """squeue's reason for a job still pending ('' once it runs or ends, or without squeue)."""
    import subprocess

    try:
        out = subprocess.run(["squeue", "-h", "-j", str(job_id), "-t", "PENDING", "-o", "%r"],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""


class _WaitForAll:
    """Submits like hydra-submitit-launcher, but waits for every job and turns a job that the
    cluster killed (time limit, ``scancel``, out of memory: no result is ever written) into a
    FAILED ``JobReturn`` plus an ``error.txt`` in its directory, instead of raising on the
    first one and abandoning the others. How such a job is noticed: submitit polls ``sacct``
    for the job state (hence real accounting on the cluster; see scripts/slurm_local.sh)."""

    _EXECUTOR: str
    params: dict[str, Any]
    config: Any
    hydra_context: Any

    def executor(self) -> Any:
        """A submitit executor set up from ``hydra.launcher`` (the preset's resources)."""
        import submitit

        queue_keys = set(OmegaConf.structured(BaseQueueConf).keys())
        init_keys = {"submitit_folder", "max_num_timeout"}
        executor = submitit.AutoExecutor(
            folder=self.params["submitit_folder"], cluster=self._EXECUTOR,
            **{f"{self._EXECUTOR}_{k}": v for k, v in self.params.items() if k == "max_num_timeout"},
        )
        # Keys shared by all executors keep their name; cluster-specific ones get the prefix.
        executor.update_parameters(**{
            (k if k in queue_keys else f"{self._EXECUTOR}_{k}"): v
            for k, v in self.params.items() if k not in init_keys
        })
        if self._EXECUTOR == "slurm":
            # A data-parallel job's tasks are its ranks: one that fails must end the others (which
            # would otherwise wait in a collective until the time limit) and the job.
            executor.update_parameters(slurm_srun_args=["--kill-on-bad-exit=1"])
        return executor

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        executor = self.executor()
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info(f"Submitit '{self._EXECUTOR}' sweep output dir: {sweep_dir}")
        todo = [(initial_job_idx + i, list(ov)) for i, ov in enumerate(job_overrides)]
        for num, ov in todo:
            log.info(f"\t#{num} : {' '.join(filter_overrides(ov))}")
        # One array job; each task calls this launcher's __call__ (the plugin's job entry point).
        args = [(ov, "hydra.sweep.dir", num, f"job_id_for_{num}", Singleton.get_state()) for num, ov in todo]
        jobs = executor.map_array(self, *zip(*args, strict=True))
        log.info(f"{len(jobs)} jobs submitted; their logs: {Path(str(self.params['submitit_folder'])).parent}/<job id>/")
        returns = []
        for job, (num, ov) in zip(jobs, todo, strict=True):
            ret = self._outcome(job, ov, num)
            if ret.status == JobStatus.COMPLETED:
                log.info(f"#{num} done: {self._job_dir(ov, num)}")
            returns.append(ret)
        # The executor makes its folder pattern itself (``.submitit/%j``), an empty directory of that name.
        literal = Path(str(self.params["submitit_folder"]))
        if "%j" in literal.name and literal.is_dir() and not any(literal.iterdir()):
            literal.rmdir()
        return returns

    def _outcome(self, job: Any, overrides: list[str], num: int) -> JobReturn:
        from submitit.core.utils import FailedJobError, UncompletedJobError

        self._wait(job)
        result = job.task(0).paths.result_pickle  # rank 0's, the one a sweep uses
        try:
            if not result.exists() and not str(job.state).upper().startswith("COMPLETED"):
                # Killed by the cluster: no result will come, so skip submitit's wait for a slow
                # filesystem to show one (15 s per job).
                raise UncompletedJobError(f"no result file {result}")
            return job.results()[0]
        except (UncompletedJobError, FailedJobError) as e:
            out = self._job_dir(overrides, num)
            error = f"{self._EXECUTOR} job {job.job_id} ended as {job.state} without a result"
            logs = f"submitit logs: {job.paths.stdout} and {job.paths.stderr}"
            if (out / ERROR_FILE).is_file():  # the job recorded its own error before it died: keep it
                with open(out / ERROR_FILE, "a") as f:
                    f.write(f"\n{error}\n{logs}\n")
            else:
                record_failure(out, overrides, error, f"{logs}\n\n{e}")
            log.error(f"#{num}: {error}; see {out / ERROR_FILE}")
            return JobReturn(overrides=overrides, working_dir=str(out), status=JobStatus.FAILED,
                             _return_value=RuntimeError(error))

    def _wait(self, job: Any, poll_s: float = 15.0) -> None:
        """``job.wait()`` (until a result appears or the cluster's accounting says the job ended),
        except that a SLURM job pending for a reason no wait can cure is cancelled at once and
        fails naming the resources asked for, rather than holding the sweep in the queue forever."""
        if self._EXECUTOR != "slurm":
            job.wait()
            return
        import subprocess
        import time

        while not job.done():
            reason = pending_reason(job.job_id)
            if reason and never_runs(reason):
                # Every task of the array asks the same: cancel them all.
                subprocess.run(["scancel", str(job.job_id).split("_")[0]], capture_output=True, timeout=60)
                asked = ", ".join(f"{k}={self.params[k]}" for k in _RESOURCES if self.params.get(k) is not None)
                raise RuntimeError(
                    f"SLURM job {job.job_id} can never start ({reason}): the request exceeds what the cluster allows "
                    f"one job: {asked}. Lower them (hydra.launcher.*, trainer.devices, trainer.num_nodes) or choose "
                    "another hydra.launcher.partition; the sweep's jobs were cancelled"
                )
            time.sleep(poll_s)
        job.wait()

    def _job_dir(self, overrides: list[str], num: int) -> Path:
        """The job's output directory, composed exactly as the job itself composed it."""
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(cfg.hydra.job):
            cfg.hydra.job.num = num
        return Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)


if _Slurm is not None:

    class SlurmLauncher(_WaitForAll, _Slurm):
        """``hydra/launcher=slurm``: submitit on SLURM, waiting for every job (see ``_WaitForAll``)."""

    class LocalLauncher(_WaitForAll, _Local):
        """``hydra/launcher=local``: submitit's local executor (subprocesses), same behaviour."""
