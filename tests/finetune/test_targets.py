"""Target tasks: K-shot splits, the dense-grid MSE, Omniglot held-out classes, image folders."""
from __future__ import annotations

import io
import json
import math
import zipfile
from pathlib import Path

import lightning as L
import pytest
import torch
from PIL import Image

from metaft.finetune.targets import FolderTarget, OmniglotTarget, SinusoidTarget
from metaft.finetune.module import FineTuner
from metaft.models import MLP
from metaft.stages import main
from tests.finetune.conftest import grey_level

ROOT = Path(__file__).resolve().parents[2]


def test_sinusoid_splits_nest_over_k_and_keep_val_test_fixed():
    all_ = SinusoidTarget(shots="all", seed=3).splits
    five = SinusoidTarget(shots=5, seed=3).splits
    assert len(all_["train"][0]) == 50 and len(five["train"][0]) == 5
    assert torch.equal(five["train"][0], all_["train"][0][:5])  # K=5 is the first 5 of the pool
    for s in ("val", "test"):
        assert torch.equal(five[s][0], all_[s][0]) and torch.equal(five[s][1], all_[s][1])
    assert torch.equal(all_["test"][0][:, 0], torch.linspace(-5, 5, 1000))
    other = SinusoidTarget(shots=5, seed=4)
    assert other.amplitude != SinusoidTarget(shots=5, seed=3).amplitude  # another seed, another function
    with pytest.raises(ValueError, match="target.shots=60 but only 50"):
        SinusoidTarget(shots=60)
    with pytest.raises(ValueError, match="positive integer or 'all'"):
        SinusoidTarget(shots="many")
    with pytest.raises(ValueError, match="target.shots must be a positive integer or 'all', got -2"):
        SinusoidTarget(shots=-2)


def test_sinusoid_test_mse_on_the_dense_grid_by_hand():
    dm = SinusoidTarget(shots=5, amplitude=2.0, phase=0.5, grid_points=101)
    net = MLP()
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.fill_(0.7)  # the model predicts 0.7 everywhere
    learner = FineTuner(net, "regression", optimizer=lambda params: torch.optim.SGD(params, lr=0.0))
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.test(learner, datamodule=dm, verbose=False)
    grid = [-5 + 10 * i / 100 for i in range(101)]
    expected = sum((0.7 - 2.0 * math.sin(x - 0.5)) ** 2 for x in grid) / 101
    assert trainer.callback_metrics["test/mse"].item() == pytest.approx(expected, rel=1e-5)
    assert trainer.callback_metrics["test/examples"].item() == 101
    # Stage 1's report (algorithms.evaluation.log_scores) with examples counted instead of episodes.
    assert set(trainer.callback_metrics) == {"test/mse", "test/mse_ci95", "test/loss", "test/examples"}
    assert trainer.callback_metrics["test/loss"].item() == pytest.approx(expected, rel=1e-5)


def _png(level: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (105, 105), level).save(buf, format="PNG")
    return buf.getvalue()


def _tiny_omniglot(root: Path) -> Path:
    """Official-layout zips: background alphabets A0, A1 (2 characters each), evaluation alphabets
    E0, E1 (3 characters each); each drawing one grey level that encodes (set, character, drawer)."""
    root.mkdir(parents=True, exist_ok=True)
    for z, (name, alphabets, chars) in enumerate([("images_background", ["A0", "A1"], 2), ("images_evaluation", ["E0", "E1"], 3)]):
        with zipfile.ZipFile(root / f"{name}.zip", "w") as f:
            for a, alpha in enumerate(alphabets):
                for c in range(chars):
                    for d in range(20):
                        f.writestr(f"{name}/{alpha}/character{c + 1:02d}/{c + 1:04d}_{d + 1:02d}.png",
                                   _png(255 - (z * 120 + a * 60 + c * 20 + d)))
    return root


def test_omniglot_target_splits_are_disjoint_held_out_and_counted(tmp_path):
    data = _tiny_omniglot(tmp_path / "omniglot")
    kw = dict(data_dir=str(data), split="lake", lake_val_alphabets=1, image_size=8, cache_dir=str(tmp_path / "cache"))
    t = OmniglotTarget(ways=4, shots=3, val_per_class=4, test_per_class=5, seed=1, **kw)
    s = t.splits
    assert [len(s[k][0]) for k in ("train", "val", "test")] == [12, 16, 20]
    for k in ("train", "val", "test"):  # class counts
        assert torch.bincount(s[k][1]).tolist() == [len(s[k][0]) // 4] * 4
    meta = set(t.omniglot.class_names("train")) | set(t.omniglot.class_names("val"))
    assert all(n.split("/")[0] in ("E0", "E1") for n in t.class_names()) and not meta & set(t.class_names())
    # Drawers, recovered from the grey level of each image: disjoint across splits, per class.
    for c in range(4):
        drawers = {k: {round(float(x.mean()) * 255) for x in s[k][0][s[k][1] == c]} for k in ("train", "val", "test")}
        assert [len(v) for v in drawers.values()] == [3, 4, 5]
        assert not (drawers["train"] & drawers["val"] or drawers["train"] & drawers["test"] or drawers["val"] & drawers["test"])
    t_all = OmniglotTarget(ways=4, shots="all", val_per_class=4, test_per_class=5, seed=1, **kw)
    assert len(t_all.splits["train"][0]) == 4 * 11 and torch.equal(t_all.splits["test"][0], s["test"][0])
    one = OmniglotTarget(ways=None, classes="alphabet", alphabet="E1", shots=1, seed=0, **kw)
    assert one.ways == 3 and {n.split("/")[0] for n in one.class_names()} == {"E1"}
    with pytest.raises(ValueError, match="not a held-out alphabet"):
        OmniglotTarget(classes="alphabet", alphabet="A0", **kw)
    with pytest.raises(ValueError, match="target.shots=12 but only 11"):
        OmniglotTarget(ways=2, shots=12, val_per_class=4, test_per_class=5, **kw)


def _real_omniglot() -> Path:
    from omegaconf import OmegaConf

    d = Path(OmegaConf.load(ROOT / "conf" / "paths" / "default.yaml").data_dir)
    return (d if d.is_absolute() else (ROOT / d).resolve()) / "omniglot"


@pytest.mark.needs_data(_real_omniglot(), "Omniglot data")
def test_real_omniglot_target_never_uses_meta_training_characters():
    from metaft.data.omniglot import default_cache_dir

    t = OmniglotTarget(str(_real_omniglot()), ways=20, shots=5, seed=0, cache_dir=str(default_cache_dir()))
    train_chars = {n.rsplit("/", 1)[0] for s in ("train", "val") for n in t.omniglot.class_names(s)}
    assert len(set(t.class_names())) == 20
    assert not {n.rsplit("/", 1)[0] for n in t.class_names()} & train_chars
    assert [len(t.splits[k][0]) for k in ("train", "val", "test")] == [100, 80, 80]


def test_folder_target_round_trip(image_folder):
    t = FolderTarget(str(image_folder), shots=3, val_per_class=2, test_per_class=3, seed=0)
    assert t.class_names() == ["cat", "dog", "emu"] and t.num_outputs == 3
    seen: set[int] = set()
    for split, per_class in (("train", 3), ("val", 2), ("test", 3)):
        x, y = t.splits[split]
        assert x.shape == (3 * per_class, 1, 28, 28) and torch.bincount(y).tolist() == [per_class] * 3
        for xi, yi in zip(x, y):
            level = round(float(xi[0, 20, 20]) * 255)  # the background pixel: the image's own grey level
            i = (level - 10 - 30 * int(yi)) // 3
            assert grey_level(int(yi), i) == level and 0 <= i < 8  # right class folder
            assert float(xi[0, 5, 5 + 7 * int(yi)]) == 1.0  # the class's bright square survived loading
            assert (int(yi), i) not in seen  # no image in two splits
            seen.add((int(yi), i))
    with pytest.raises(ValueError, match="only 8 examples"):
        FolderTarget(str(image_folder), val_per_class=4, test_per_class=4)
    with pytest.raises(FileNotFoundError, match="CLASS_NAME"):
        FolderTarget(str(image_folder / "missing"))


def test_folder_fine_tune_end_to_end_matches_a_hand_evaluation(run_config, image_folder, conv_ckpt):
    cfg = run_config("finetune", [f"meta_ckpt={conv_ckpt}", "target=folder", f"target.root={image_folder}",
                                  "target.shots=3", "target.val_per_class=2", "target.test_per_class=3",
                                  "head_init=prototypes", "trainer.max_steps=4", "trainer.val_check_interval=2",
                                  "progress=log", "finetuner.optimizer.lr=0.01"])
    main(cfg)
    out = Path(cfg.hydra.runtime.output_dir)
    res = json.loads((out / "results.json").read_text())
    assert res["head_init"] == "prototypes" and res["train_examples"] == 9 and res["test/examples"] == 9
    from metaft.models import Conv4
    from metaft.stages.finetune import build

    # The reference shares no pipeline code: the test images are the files of each class that the
    # run did not train or validate on (found by grey level), loaded here with PIL, and scored by
    # a fresh Conv4 holding the scored checkpoint's weights (the best by validation).
    assert Path(res["ckpt"]).name == "best.ckpt"
    dm, _, _ = build(cfg)
    used = {round(float(x[0, 20, 20]) * 255) for s in ("train", "val") for x in dm.splits[s][0]}
    files = [(c, root) for c, name in enumerate(["cat", "dog", "emu"]) for i, root in
             enumerate(sorted((image_folder / name).glob("*.png"))) if grey_level(c, i) not in used]
    assert len(files) == 9 and [c for c, _ in files] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    x = torch.stack([torch.tensor(list(Image.open(f).convert("L").getdata()), dtype=torch.float32).div(255).view(1, 28, 28)
                     for _, f in files])
    state = torch.load(res["ckpt"], weights_only=True)["state_dict"]
    net = Conv4(filters=4, out_features=3)
    net.load_state_dict({k[len("net."):]: v for k, v in state.items() if k.startswith("net.")})
    start = torch.load(conv_ckpt, weights_only=True)["state_dict"]
    assert not torch.equal(state["net.body.0.0.weight"], start["net.body.0.0.weight"])  # it was fine-tuned
    with torch.no_grad():
        acc = (net(x).argmax(-1) == torch.tensor([c for c, _ in files])).double().mean().item() * 100
    assert res["test/acc"] == pytest.approx(acc, abs=1e-4)


def test_omniglot_target_takes_one_rotation_per_character(tmp_path):
    """With rotations as classes, a target never holds two turns of one character (the same
    drawings, turned, would be one class's training data and another's test data)."""
    data = _tiny_omniglot(tmp_path / "omniglot")
    kw = dict(data_dir=str(data), split="lake", lake_val_alphabets=1, rotations=True, image_size=8,
              cache_dir=str(tmp_path / "cache"))
    rotations = set()
    for seed in range(8):
        t = OmniglotTarget(ways=6, shots=1, seed=seed, **kw)  # all 6 held-out characters
        chars = [n.rsplit("/", 1)[0] for n in t.class_names()]
        assert len(set(chars)) == 6, t.class_names()
        rotations |= {n.rsplit("/", 1)[1] for n in t.class_names()}
    assert len(rotations) == 4  # the rotation of each is still random
    assert OmniglotTarget(ways=None, classes="alphabet", alphabet="E0", seed=0, **kw).ways == 3
    with pytest.raises(ValueError, match=r"target.ways=7: choose 2..6 \(held-out characters"):
        OmniglotTarget(ways=7, **kw)
