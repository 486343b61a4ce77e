"""The one entry point: `python train.py [--config-name train|eval] [overrides]`."""
import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from metaft.run import main as run  # imported late so `--help` stays fast

    return run(cfg)


if __name__ == "__main__":
    main()
