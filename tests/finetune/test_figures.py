"""Stage 2's TensorBoard figures: at the starting point and at every validation."""
from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from metaft.stages import main
from tests.finetune.conftest import FAST


def events(cfg) -> EventAccumulator:
    out = Path(cfg.hydra.runtime.output_dir) / "tensorboard"
    return EventAccumulator(str(out), size_guidance={"images": 0, "scalars": 0}).Reload()


def images(cfg, tag: str) -> list[int]:
    ea = events(cfg)
    return [e.step for e in ea.Images(tag)] if tag in ea.Tags()["images"] else []


def validations(cfg, metric: str) -> list[int]:
    """The steps of the validation scalars: the starting point (0), then Lightning's own steps."""
    return sorted({e.step for e in events(cfg).Scalars(metric)})


def test_a_regression_target_draws_its_fit_at_the_start_and_every_validation(run_config, mlp_ckpt):
    cfg = run_config("finetune", [f"meta_ckpt={mlp_ckpt}", "early_stopping.patience=0", "test=false", *FAST])
    main(cfg)
    # beside every validation's scalars: the starting point and the validations after steps 3 and 6
    assert images(cfg, "val/fit") == validations(cfg, "val/mse") and len(images(cfg, "val/fit")) == 3


def test_an_image_target_draws_its_predictions_and_images_can_be_turned_off(run_config, conv_ckpt, image_folder):
    common = [f"meta_ckpt={conv_ckpt}", "target=folder", f"target.root={image_folder}", "target.shots=3",
              "target.val_per_class=2", "target.test_per_class=3", "early_stopping.patience=0", "test=false", *FAST]
    cfg = run_config("finetune", common, "on")
    main(cfg)
    assert images(cfg, "val/predictions") == validations(cfg, "val/acc") and len(images(cfg, "val/predictions")) == 3
    cfg = run_config("finetune", [*common, "logging.images=false"], "off")
    main(cfg)
    assert images(cfg, "val/predictions") == []
