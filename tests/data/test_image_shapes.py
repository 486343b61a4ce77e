"""An image folder that cannot fill its episodes is refused before the run starts, every problem at
once, a line each; a test pool of few images labels its interval as conditional on those images."""
from __future__ import annotations

import pytest

from metaft.data.images import FewShotImages
from metaft.runtime.data_checks import small_pool
from tests.data import miniatures as mn
from tests.workflow.conftest import train_cli


def _folder(root, per_split: dict[str, int], per_class: int) -> list[str]:
    """``root/imgs`` with ``per_split[s]`` classes of ``per_class`` images per split; the list files."""
    lists = []
    for s, n in per_split.items():
        names = [f"{s}_{i}" for i in range(n)]
        mn.image_folder(root / "imgs", names, per_class=per_class)
        (root / f"{s}.txt").write_text("\n".join(names) + "\n")
        lists.append(f"dataset.class_lists.{s}={root / s}.txt")
    return lists


def test_an_image_folder_too_small_for_its_episodes_is_refused_before_a_run_directory_exists(tmp_path):
    lists = _folder(tmp_path, {"train": 4, "val": 5, "test": 2}, per_class=10)
    proc = train_cli(["dataset=image_folder", f"dataset.data_dir={tmp_path / 'imgs'}", *lists,
                      f"dataset.cache_dir={tmp_path / 'cache'}", "dataset.ways=5", "dataset.shots=1",
                      "dataset.queries=15", "model.filters=4", "trainer.max_steps=2"], cwd=tmp_path, timeout=240)
    assert proc.returncode == 1, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors[:5] == [
        "error: dataset.ways=5 but the train split of image_folder has only 4 classes; lower dataset.ways (or give "
        "the split more classes)",
        "error: dataset.shots + queries = 16 but class 'train_0' of the train split of image_folder has only 10 "
        "images; lower dataset.shots or dataset.queries",
        "error: dataset.shots + queries = 16 but class 'val_0' of the val split of image_folder has only 10 images; "
        "lower dataset.shots or dataset.queries",
        "error: dataset.ways=5 but the test split of image_folder has only 2 classes; lower dataset.ways (or give the "
        "split more classes)",
        "error: dataset.shots + queries = 16 but class 'test_0' of the test split of image_folder has only 10 images; "
        "lower dataset.shots or dataset.queries",
    ]
    assert "Traceback" not in proc.stderr
    assert not any((tmp_path / "outputs" / "train" / "runs").glob("*"))  # no run directory left behind
    assert not (tmp_path / "cache").exists()  # nothing was decoded


def test_shape_problems_name_the_split_settings_and_pass_a_folder_that_fits(tmp_path):
    _folder(tmp_path, {"train": 3, "val": 2, "test": 2}, per_class=6)
    lists = {s: str(tmp_path / f"{s}.txt") for s in ("train", "val", "test")}
    kw = dict(class_lists=lists, cache_dir=str(tmp_path / "c"), image_size=28)
    ok = FewShotImages("image_folder", str(tmp_path / "imgs"), ways=2, shots=1, queries=5, **kw)
    assert ok.shape_problems(("train", "val", "test")) == []
    wide = FewShotImages("image_folder", str(tmp_path / "imgs"), ways=2, train_ways=4, shots=1, queries=2,
                         train_shots=5, **kw)
    assert wide.shape_problems(("train",)) == [
        "dataset.train_ways=4 but the train split of image_folder has only 3 classes; lower dataset.train_ways (or "
        "give the split more classes)",
        "dataset.train_shots + queries = 7 but class 'train_0' of the train split of image_folder has only 6 images; "
        "lower dataset.train_shots or dataset.queries"]


def test_a_small_test_pool_labels_its_interval_conditional_on_those_images(tmp_path, caplog):
    """The rule: fewer distinct test images than 10 episodes' worth (ways x (shots + queries) each)."""
    _folder(tmp_path, {"test": 2}, per_class=10)
    kw = dict(class_lists={"test": str(tmp_path / "test.txt")}, cache_dir=str(tmp_path / "c"), image_size=28,
              test_episodes=1000)
    tiny = FewShotImages("image_folder", str(tmp_path / "imgs"), ways=2, shots=1, queries=7, **kw)
    note = small_pool(tiny, "test", "acc")
    assert note is not None and note["images"] == 20 and note["images_per_episode"] == 16 and note["episodes"] == 1000
    assert note["test/acc_ci95"].startswith("conditional on these 20 images: the 1000 test episodes reuse them")
    assert "small pool: test/acc_ci95 is conditional on these 20 images" in caplog.text
    # 40 images, 4 per episode: 10 episodes' worth exactly, no label
    _folder(tmp_path / "big", {"test": 2}, per_class=20)
    kw["class_lists"] = {"test": str(tmp_path / "big" / "test.txt")}
    enough = FewShotImages("image_folder", str(tmp_path / "big" / "imgs"), ways=2, shots=1, queries=1, **kw)
    assert small_pool(enough, "test", "acc") is None


def test_a_run_on_a_small_test_pool_says_so_in_results_json(run_config, tmp_path):
    import json
    from pathlib import Path

    from metaft.stages import main

    lists = _folder(tmp_path, {"train": 3, "val": 2, "test": 2}, per_class=10)
    cfg = run_config("train", ["dataset=image_folder", f"dataset.data_dir={tmp_path / 'imgs'}", *lists,
                               f"dataset.cache_dir={tmp_path / 'cache'}", "dataset.ways=2", "dataset.shots=1",
                               "dataset.queries=5", "dataset.image_size=28", "dataset.val_episodes=4",
                               "dataset.test_episodes=20", "dataset.eval_batch_size=20", "model=conv4", "model.filters=4",
                               "model.image_size=28", "model.in_channels=3", "algorithm=protonet", "trainer.max_steps=2",
                               "trainer.val_check_interval=2", "progress=log"], "small")
    main(cfg)
    res = json.loads((Path(cfg.hydra.runtime.output_dir) / "results.json").read_text())
    assert res["small_pool"]["images"] == 20 and res["small_pool"]["images_per_episode"] == 12
    assert res["small_pool"]["test/acc_ci95"].startswith("conditional on these 20 images: the 20 test episodes")
