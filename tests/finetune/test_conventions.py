"""Fine-tuning targets take their input conventions (channels, size, mean/std) from the checkpoint's
meta-training data; a setting given on the command line wins, with a warning naming the difference."""
from __future__ import annotations

import logging

import torch

from metaft.models import Conv4
from metaft.stages.finetune import build
from tests.finetune.conftest import FAST, grey_level, save_ckpt

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
RGB_CFG = {"_target_": "metaft.models.Conv4", "in_channels": 3, "image_size": 20, "filters": 4, "out_features": 5,
           "pool": "max", "bn": "transductive"}
RGB_DATA = {"_target_": "metaft.data.images.FewShotImages", "name": "image_folder", "channels": 3, "image_size": 20,
            "mean": MEAN, "std": STD}


def _rgb_ckpt(tmp_path):
    torch.manual_seed(5)
    net = Conv4(in_channels=3, image_size=20, filters=4, out_features=5)
    return save_ckpt(tmp_path / "rgb.ckpt", net, RGB_CFG, dataset=RGB_DATA)


def test_a_normalised_rgb_checkpoint_fine_tunes_a_folder_with_its_mean_and_std(run_config, tmp_path, image_folder,
                                                                               caplog):
    ckpt = _rgb_ckpt(tmp_path)
    common = [f"meta_ckpt={ckpt}", "target=folder", f"target.root={image_folder}", "target.shots=3",
              "target.val_per_class=2", "target.test_per_class=3", *FAST]
    with caplog.at_level(logging.WARNING):
        dm, _, _ = build(run_config("finetune", common, "taken"))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "differs" in r.getMessage()]
    assert (dm.channels, dm.image_size, dm.mean, dm.std) == (3, 20, MEAN, STD)
    x, y = dm.splits["train"]
    assert x.shape[1:] == (3, 20, 20)
    # Every pixel of a grey-level image outside the bright square, normalised per channel.
    names = dm.class_names()
    first = sorted((image_folder / names[int(y[0])]).glob("*.png"))
    levels = {grey_level(int(y[0]), i) for i in range(len(first))}
    corner = x[0, :, -1, -1]  # bottom-right: outside the square
    raw = corner * torch.tensor(STD) + torch.tensor(MEAN)
    assert torch.allclose(raw, raw[0].expand(3), atol=1e-5)  # one grey level, undone channel by channel
    assert min(abs(float(raw[0]) * 255 - v) for v in levels) < 0.6

    # Forced otherwise on the command line: the user's value, and a warning naming it.
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        dm, _, _ = build(run_config("finetune", [*common, "target.mean=null", "target.std=null"], "forced"))
    assert dm.mean is None and dm.std is None and dm.channels == 3
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    assert "target.mean=None differs from the checkpoint's meta-training data (mean=[0.485" in warned
    assert "target.std=None differs" in warned


def test_without_a_checkpoint_the_folder_target_keeps_its_own_settings(run_config, tmp_path,
                                                                         image_folder):
    # Without a checkpoint the target's own settings apply (grey, 28 px, raw pixels).
    cfg = run_config("finetune", ["init=random", "model=conv4", "model.filters=4", "target=folder",
                                  f"target.root={image_folder}", "target.shots=3", "target.val_per_class=2",
                                  "target.test_per_class=3", *FAST], "random")
    dm, _, _ = build(cfg)
    assert (dm.channels, dm.image_size, dm.mean) == (1, 28, None)
    assert float(dm.splits["train"][0].min()) >= 0.0


def test_a_dataset_of_one_image_format_declares_it():
    """Omniglot's stored config names no channels: its class declares them (grey), where the stored
    config of a dataset without images gives no conventions."""
    from metaft.data import OmniglotDataModule, SinusoidDataModule
    from metaft.finetune.conventions import meta_conventions

    path = lambda cls: f"{cls.__module__}.{cls.__name__}"  # noqa: E731
    assert meta_conventions({"dataset": {"_target_": path(OmniglotDataModule)}})["channels"] == OmniglotDataModule.channels
    assert meta_conventions({"dataset": {"_target_": path(SinusoidDataModule)}}) == {}
