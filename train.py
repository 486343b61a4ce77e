"""The one entry point: `python train.py [--config-name train|eval] [overrides]`."""
import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

log = logging.getLogger("metaft")


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from metaft.run import main as run  # imported late so `--help` stays fast
    from metaft.sweep import ERROR_FILE, record_exception

    hc = HydraConfig.get()
    out = Path(hc.runtime.output_dir)
    (out / ERROR_FILE).unlink(missing_ok=True)  # a rerun into this directory starts clean
    try:
        return run(cfg)
    except Exception as e:
        # Leave the error where the run's results would be, and its traceback in the run's log;
        # then fail: a single run exits non-zero, a sweep's sweeper decides (see metaft.sweep).
        record_exception(out, list(hc.overrides.task), e)
        log.error(f"run failed; error recorded in {out / ERROR_FILE}", exc_info=True)
        raise


if __name__ == "__main__":
    main()
