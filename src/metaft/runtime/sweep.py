"""How runs and sweeps fail, and the resolvers of the SLURM launcher presets.

A failed job records its error in its own directory (``error.txt``, and ``results.json`` with
``status: failed``) and fails honestly (a FAILED Hydra ``JobReturn``); the sweeper decides what
happens next. ``ContinueSweeper`` (the default, see ``conf/hydra/sweeper/continue.yaml``) runs
every job and then ends the sweep with one summary of all failures and a non-zero exit; the
Optuna sweeper marks the trial failed and goes on (``max_failure_rate`` in the presets). The
Hydra plugins themselves live in ``hydra_plugins.metaft_sweep`` (Hydra only loads plugins from
the ``hydra_plugins`` namespace).
"""
from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any, Sequence

from hydra.core.utils import JobReturn, filter_overrides
from hydra.errors import CompactHydraException
from omegaconf import OmegaConf

ERROR_FILE = "error.txt"


def record_failure(out_dir: str | Path, overrides: Sequence[str], error: str, detail: str = "",
                   keep_results: bool = False) -> None:
    """Leave a failed run's error in its directory: ``error.txt`` for people, and a
    ``results.json`` with ``status: failed`` for ``metaft.report``. ``keep_results``: the
    directory's results.json is an earlier, finished run's (a resume that failed): keep it."""
    from metaft.runtime.io import atomic_write_text, write_json  # late: keeps torch out of `--help`

    out = Path(out_dir)
    text = f"overrides: {' '.join(overrides)}\nerror: {error}\n\n{detail}".rstrip() + "\n"
    atomic_write_text(out / ERROR_FILE, text)
    if not keep_results:
        write_json(out / "results.json", {"status": "failed", "error": error, "overrides": list(overrides)})


def one_line(exc: BaseException, limit: int = 500) -> str:
    """``Type: message`` on one line (Hydra's wrappers put the cause on the next lines)."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def record_exception(out_dir: str | Path, overrides: Sequence[str], exc: BaseException, keep_results: bool = False) -> None:
    record_failure(out_dir, overrides, one_line(exc), "".join(traceback.format_exception(exc)), keep_results)


class SweepFailed(CompactHydraException):
    """Some jobs of a sweep failed; the message lists them (Hydra prints it and exits 1)."""


def failure_summary(failed: Sequence[JobReturn], total: int) -> str:
    lines = [f"{len(failed)} of {total} jobs failed; the other jobs' results are in their directories."]
    for r in failed:
        e = r._return_value  # the job's exception (``return_value`` would re-raise it)
        err = one_line(e) if isinstance(e, BaseException) else r.status.name
        # run_job's working_dir is the process's cwd; the job's own directory is output_dir.
        out = OmegaConf.select(r.hydra_cfg, "hydra.runtime.output_dir") if r.hydra_cfg else None
        where = Path(out or r.working_dir or ".") / ERROR_FILE
        lines.append(f"  {' '.join(filter_overrides(r.overrides or []))}\n    {err}\n    -> {where}")
    return "\n".join(lines)


def slurm_gpus(accelerator: str, devices: Any) -> int | None:
    """GPUs per node for a ``hardware`` preset: ``trainer.devices`` on GPU, else none asked
    (``None``: no ``--gpus-per-node`` at all, which CPU-only partitions may reject)."""
    if str(accelerator) not in ("gpu", "cuda"):
        return None
    return slurm_tasks(devices)


def slurm_tasks(devices: Any) -> int:
    """Tasks per node: one per device, as Lightning's SLURM environment expects for DDP."""
    try:
        n = int(devices)
    except (TypeError, ValueError):
        n = -1
    if n < 1:
        raise ValueError(
            f"trainer.devices={devices!r} cannot be turned into SLURM resources; set it to a "
            "number of devices per node (e.g. trainer.devices=2), or set hydra.launcher.tasks_per_node "
            "and hydra.launcher.gpus_per_node yourself"
        )
    return n


def register_resolvers() -> None:
    """``${metaft.slurm_gpus:...}`` and ``${metaft.slurm_tasks:...}``, used by the launcher presets, and
    ``${metaft.data_dir:}`` (``metaft.runtime.paths``)."""
    OmegaConf.register_new_resolver("metaft.slurm_gpus", slurm_gpus, replace=True)
    OmegaConf.register_new_resolver("metaft.slurm_tasks", slurm_tasks, replace=True)
    from metaft.runtime.paths import register_resolvers as register_paths  # paths.data_dir's default

    register_paths()


# At import, which Hydra's plugin discovery does (hydra_plugins.metaft_sweep imports this module)
# in the sweep process and in every job, before any preset is resolved.
register_resolvers()
