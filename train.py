"""The one entry point: `python train.py [--config-name train|eval] [overrides]`."""
import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

log = logging.getLogger("metaft")


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from metaft.stages import main as run  # imported late so `--help` stays fast
    from metaft.runtime.run_dirs import finished_results
    from metaft.runtime.sweep import ERROR_FILE, record_exception

    hc = HydraConfig.get()
    out = Path(hc.runtime.output_dir)
    (out / ERROR_FILE).unlink(missing_ok=True)  # a rerun into this directory starts clean
    results = out / "results.json"
    earlier = results.read_bytes() if finished_results(results) else None  # a run being resumed here
    try:
        return run(cfg)
    except Exception as e:
        # Leave the error where the run's results would be, and its traceback in the run's log;
        # then fail: a single run exits non-zero, a sweep's sweeper decides (see metaft.runtime.sweep).
        # An earlier run's results that this one left untouched are kept; its own are marked failed.
        keep = earlier is not None and results.is_file() and results.read_bytes() == earlier
        record_exception(out, list(hc.overrides.task), e, keep_results=keep)
        log.error(f"run failed; error recorded in {out / ERROR_FILE}", exc_info=True)
        raise


if __name__ == "__main__":
    import sys

    from metaft.runtime.validate import check_overrides, split_argv

    # Unknown keys and wrong types are refused here, before Hydra creates a run directory.
    command = split_argv(sys.argv[1:])
    if command is not None:
        check_overrides(Path(__file__).resolve().parent / "conf", *command)
    main()
