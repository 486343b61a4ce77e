"""Fine-tuning fixtures: hand-made meta-checkpoints (no meta-training needed) and tiny image folders."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from metaft.checkpoint import CLASSES_KEY
from metaft.data.identity import dataset_classes
from metaft.models import MLP, Conv4

MLP_CFG = {"_target_": "metaft.models.MLP", "in_features": 1, "hidden": [40, 40], "out_features": 1}
CONV_CFG = {"_target_": "metaft.models.Conv4", "in_channels": 1, "image_size": 28, "filters": 4, "out_features": 5,
            "pool": "max", "bn": "transductive"}
FAST = ["trainer.max_steps=6", "trainer.val_check_interval=3", "progress=log",
        "checkpoint.every_n_train_steps=3"]


def save_ckpt(path: Path, net: torch.nn.Module, model_cfg: dict, algorithm: str = "metaft.algorithms.MAML",
              extra: dict | None = None, dataset: dict | None = None) -> Path:
    """A checkpoint in the stage-1 format: ``net.*`` weights, the run config under metaft_config
    and, for a dataset with classes, the classes it stands for having been trained on."""
    sd = {f"net.{k}": v.clone() for k, v in net.state_dict().items()}
    sd.update(extra or {})
    cfg = {"model": model_cfg, "algorithm": {"_target_": algorithm}, "dataset": dataset or {}}
    data = {"state_dict": sd, "metaft_config": cfg}
    try:
        classes = dataset_classes(dataset) if dataset else None
    except (ValueError, FileNotFoundError):  # a config naming no class lists (e.g. Omniglot without data_dir)
        classes = None
    if classes is not None:
        data[CLASSES_KEY] = classes.stored()
    torch.save(data, path)
    return path


@pytest.fixture
def mlp_ckpt(tmp_path) -> Path:
    torch.manual_seed(123)
    return save_ckpt(tmp_path / "maml.ckpt", MLP(), MLP_CFG)


@pytest.fixture
def conv_ckpt(tmp_path) -> Path:
    torch.manual_seed(321)
    return save_ckpt(tmp_path / "conv.ckpt", Conv4(filters=4, out_features=5), CONV_CFG)


def grey_level(cls: int, i: int) -> int:
    """A distinct grey level per (class, image): identifies every image after loading."""
    return 10 + 30 * cls + 3 * i


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """3 classes x 8 images (28x28, one grey level each, plus a class-dependent bright square)."""
    root = tmp_path / "images"
    for c, name in enumerate(["cat", "dog", "emu"]):
        (root / name).mkdir(parents=True)
        for i in range(8):
            img = Image.new("L", (28, 28), grey_level(c, i))
            img.paste(255, (4 + 7 * c, 4, 11 + 7 * c, 11))
            img.save(root / name / f"{i:02d}.png")
    (root / "notes.txt").write_text("not a class")
    return root
