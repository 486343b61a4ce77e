"""metaft's command line: ``metaft [--config-name train|eval|finetune] [overrides]`` (the console
script), ``python -m metaft ...`` and ``python train.py ...`` in a checkout are the same command.

The configs are the package ``metaft.conf``, found through Hydra's search path (``pkg://``), so an
installed copy runs from any directory; ``--config-dir DIR`` and ``hydra.searchpath=[...]`` add a
user's own. Every command line is checked before Hydra creates a run directory
(``metaft.runtime.validate``).
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Sequence

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

# The configs shipped in the package (conf/ of the source tree; src/metaft/conf links to it).
CONFIGS = "pkg://metaft.conf"

log = logging.getLogger("metaft")


@hydra.main(version_base="1.3", config_path=CONFIGS, config_name="train")
def main(cfg: DictConfig) -> float | None:
    from metaft.stages import main as run  # imported late so `--help` stays fast
    from metaft.runtime.quiet import quiet_libraries
    from metaft.runtime.run_dirs import finished_results, never_started, user_error
    from metaft.runtime.sweep import ERROR_FILE, one_line, record_exception

    quiet_libraries()
    hc = HydraConfig.get()
    out = Path(hc.runtime.output_dir)
    single = hc.mode == RunMode.RUN
    log.info(f"run directory: {out}")
    (out / ERROR_FILE).unlink(missing_ok=True)  # a rerun into this directory starts clean
    results = out / "results.json"
    earlier = results.read_bytes() if finished_results(results) else None  # a run being resumed here
    try:
        return run(cfg)
    except Exception as e:
        fixable = user_error(e)
        if single and fixable is not None and earlier is None and never_started(out, f"{hc.job.name}.log"):
            # A run that never started leaves nothing but its message: a time-stamped directory of its
            # own goes (a directory named with hydra.run.dir is the user's, and keeps the record).
            named = any(o.split("=", 1)[0].lstrip("+~") == "hydra.run.dir" for o in hc.overrides.hydra)
            note = ""
            if named:
                record_exception(out, list(hc.overrides.task), e)
            else:
                logging.shutdown()  # the job's log file is closed before its directory goes
                shutil.rmtree(out, ignore_errors=True)
                note = f"\n(the run never started: {out} was removed)"
            if not os.environ.get("HYDRA_FULL_ERROR"):
                raise SystemExit(f"error: {fixable}{note}") from None
            raise
        # Leave the error where the run's results would be, and its traceback in the run's log;
        # then fail: a single run exits non-zero, a sweep's sweeper decides (see metaft.runtime.sweep).
        # An earlier run's results that this one left untouched are kept; its own are marked failed.
        keep = earlier is not None and results.is_file() and results.read_bytes() == earlier
        record_exception(out, list(hc.overrides.task), e, keep_results=keep)
        # The traceback goes to the log file only: Hydra prints it on the console (once).
        log.error(f"run failed: {one_line(e)}; error recorded in {out / ERROR_FILE}")
        record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "traceback", None, sys.exc_info())
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.FileHandler):
                handler.handle(record)
        raise



def run(argv: Sequence[str] | None = None) -> None:
    """The entry point: check the command line, then hand it to Hydra (which reads ``sys.argv``)."""
    from metaft.runtime.validate import check_overrides, split_argv

    if argv is not None:
        sys.argv[1:] = list(argv)
    # Unknown keys and wrong types are refused here, before Hydra creates a run directory.
    command = split_argv(sys.argv[1:])
    if command is not None:
        cp = primary_config_path(command.config_path) if command.config_path is not None else None
        check_overrides(CONFIGS, command.config_name, command.overrides, command.config_dirs, cp)
    main()


def primary_config_path(config_path: str) -> str:
    """The primary config directory Hydra reads for ``--config-path config_path``: absolute and
    ``pkg://`` paths as given, a relative one against this module's package (Hydra's rule for an
    ``@hydra.main`` function in a module), so the checks read the configs the run will."""
    from hydra._internal.utils import compute_search_path_dir, detect_calling_file_or_module_from_task_function

    return compute_search_path_dir(*detect_calling_file_or_module_from_task_function(main), config_path) or config_path
