"""Class identity by image source: benchmarks cut from the same images share classes, and a
checkpoint is never scored on classes it has seen (refused before any file is read: the data
directories here do not exist); split lists are checked disjoint; the decoded cache follows the
class list."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from metaft.checkpoint import CLASSES_KEY
from metaft.data.identity import (IDENTITIES, NO_CLASSES, OMNIGLOT, check_unseen, class_identity, dataset_classes,
                                  image_classes, target_classes)
from metaft.data.images import source
from metaft.data.images.datamodule import FewShotImages
from metaft.data.images.store import Decoded, build_store
from metaft.data.omniglot import OmniglotDataModule
from metaft.data.sinusoid import SinusoidDataModule
from tests.data import miniatures as mn
from tests.data.miniatures import MINI

DATASET = "metaft.data.images.FewShotImages"
CONF = Path(__file__).parents[2] / "conf"


def _fake_checkpoint(path: Path, name: str) -> Path:
    """A checkpoint of a run on benchmark ``name``: its stored config and classes only."""
    torch.save({"state_dict": {}, CLASSES_KEY: image_classes(name).stored(),
                "metaft_config": {"dataset": {"_target_": DATASET, "name": name}, "seed": 0}}, path)
    return path


@pytest.mark.parametrize("trained, scored, total, train, val", [
    ("tiered_imagenet", "mini_imagenet", 20, 5, 1),
    ("mini_imagenet", "tiered_imagenet", 160, 13, 2),
    ("cifar_fs", "fc100", 20, 11, 4),   # FC100's 4 test superclasses are 20 CIFAR-100 classes
    ("fc100", "cifar_fs", 20, 11, 4),
])
def test_benchmarks_of_the_same_images_are_refused(run_config, tmp_path, trained, scored, total, train, val):
    from metaft.stages import main

    ckpt = _fake_checkpoint(tmp_path / "c.ckpt", trained)
    cfg = run_config("eval", [f"ckpt_path={ckpt}", f"dataset={scored}", f"dataset.data_dir={tmp_path / 'nowhere'}"])
    with pytest.raises(ValueError, match=rf"dataset {scored} scores {train + val} of its {total} test classes that the "
                                         rf"checkpoint .* has seen: {train} in its train classes \(n?\w.*; {val} in its "
                                         rf"val classes .*allow_seen_classes=true"):
        main(cfg)
    # Validation classes are scored against the training classes only.
    note = check_unseen(torch.load(ckpt), image_classes(scored), "test", "here", "ckpt", allow=True)
    assert note["allow_seen_classes"] is True and f"{train + val} of its {total}" in note["class_check"]


def test_mini_imagenet_to_cub_is_cross_domain(run_config, tmp_path):
    from metaft.stages import main

    ckpt = _fake_checkpoint(tmp_path / "mini.ckpt", "mini_imagenet")
    note = check_unseen(torch.load(ckpt), image_classes("cub"), "test", "dataset cub", "ckpt")
    assert note["class_check"].startswith("cross-domain: trained on mini_imagenet (imagenet images), scored on cub")
    # Through eval: past the check, the missing CUB archive is the next thing named.
    cfg = run_config("eval", [f"ckpt_path={ckpt}", "dataset=cub", f"dataset.data_dir={tmp_path / 'nowhere'}",
                              f"dataset.cache_dir={tmp_path / 'cache'}"])
    with pytest.raises(Exception, match="CUB_200_2011.tgz"):
        main(cfg)
    # Another source's class of the same name is another class: CIFAR's names never meet ImageNet's wnids,
    # and an image folder named like CIFAR classes is not CIFAR.
    folder = image_classes("image_folder", {"test": ["lion", "tiger"]})
    assert check_unseen({CLASSES_KEY: image_classes("cifar_fs").stored()}, folder, "test", "x", "c")["class_check"] \
        .startswith("cross-domain")
    # The same benchmark's own test classes pass.
    assert check_unseen(torch.load(ckpt), image_classes("mini_imagenet"), "test", "x", "c")["class_check"] == \
        "passed: none of the 20 scored classes was seen"


def test_finetune_image_target_refused_before_its_data(run_config, tmp_path):
    from metaft.stages import main
    from tests.finetune.conftest import CONV_CFG

    torch.save({"state_dict": {}, CLASSES_KEY: image_classes("tiered_imagenet").stored(),
                "metaft_config": {"model": CONV_CFG, "algorithm": {"_target_": "metaft.algorithms.MAML"},
                                  "dataset": {"_target_": DATASET, "name": "tiered_imagenet"}}}, tmp_path / "t.ckpt")
    cfg = run_config("finetune", [f"meta_ckpt={tmp_path / 't.ckpt'}", "target=mini_imagenet",
                                  f"target.data_dir={tmp_path / 'nowhere'}"], "ft")
    with pytest.raises(ValueError, match=r"the target scores 6 of its 20 test classes"):
        main(cfg)
    # target.split=train of the same benchmark: every class seen.
    t = target_classes({"_target_": "metaft.finetune.image_targets.ImageTarget", "name": "tiered_imagenet",
                        "split": "train"})
    with pytest.raises(ValueError, match=r"scores 351 of its 351 test classes"):
        check_unseen(torch.load(tmp_path / "t.ckpt"), t, "test", "the target", "ckpt")


def test_overlapping_split_lists_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"image_folder: the train and test class lists share 1 classes \(b\).*"
                                         r"dataset.class_lists"):
        image_classes("image_folder", {"train": ["a", "b"], "val": ["c"], "test": ["./b/", "d"]})
    with pytest.raises(ValueError, match=r"mini_imagenet: the train and test class lists share 20 classes"):
        image_classes("mini_imagenet", {"test": source.packaged_classes("mini_imagenet", "train")[:20]})
    with pytest.raises(ValueError, match=r"fc100: the train and val class lists share 5 classes \(bear, leopard"):
        image_classes("fc100", {"train": ["fish", "large_carnivores"]})
    # Refused when the datamodule is built, before any file is read (the folder has no images).
    root = tmp_path / "folder"
    root.mkdir()
    with pytest.raises(ValueError, match=r"share 1 classes \(b\)"):
        FewShotImages("image_folder", str(root), class_lists={"train": ["a", "b"], "test": ["b"]})
    # Packaged lists are checked too.
    bad = tmp_path / "splits" / "cub"
    bad.mkdir(parents=True)
    for s, names in (("train", ["x", "y"]), ("val", ["z"]), ("test", ["y"])):
        (bad / f"{s}.txt").write_text("\n".join(names) + "\n")
    orig = source.SPLIT_DIR
    try:
        source.SPLIT_DIR = bad.parent
        with pytest.raises(ValueError, match=r"cub: the train and test class lists share 1 classes \(y\).*splits/cub/"):
            image_classes("cub")
    finally:
        source.SPLIT_DIR = orig


def test_a_changed_split_file_rebuilds_the_cache(tmp_path, monkeypatch):
    splits = tmp_path / "splits" / "mini_imagenet"
    splits.mkdir(parents=True)
    for s, names in MINI.items():
        (splits / f"{s}.txt").write_text("\n".join(names) + "\n")
    monkeypatch.setattr(source, "SPLIT_DIR", splits.parent)
    data = tmp_path / "mini"
    data.mkdir()
    mn.mini_pickle(data, MINI)
    kw = dict(cache_dir=str(tmp_path / "cache"), ways=2, shots=1, queries=1)
    first = FewShotImages("mini_imagenet", str(data), **kw).store("test")
    assert first.classes == MINI["test"]
    # The split file now lists the same classes in another order: class 0 is the file's class 2.
    (splits / "test.txt").write_text("\n".join(MINI["test"][::-1]) + "\n")
    store = FewShotImages("mini_imagenet", str(data), **kw).store("test")
    assert store.classes == MINI["test"][::-1]
    written = [int(store.images[rows[0], 0, 0, 0]) for rows in store.rows_by_class()]  # the miniature's class marks
    assert written == [2, 1, 0]


def test_a_store_built_for_another_class_list_is_decoded_again(tmp_path):
    calls = []

    def read(classes: list[str]):
        def fill(out: np.ndarray) -> None:
            out[:] = len(calls)

        def decoded() -> Decoded:
            calls.append(classes)
            return Decoded(classes, np.arange(len(classes)), fill)

        return decoded

    a = build_store(tmp_path, "key", 2, read(["a", "b"]), class_list=["a", "b"])
    assert a.classes == ["a", "b"] and len(calls) == 1
    assert build_store(tmp_path, "key", 2, read(["a", "b"]), class_list=["a", "b"]).classes == ["a", "b"]
    assert len(calls) == 1  # opened from the cache
    b = build_store(tmp_path, "key", 2, read(["b", "a"]), class_list=["b", "a"])  # same key, other list
    assert b.classes == ["b", "a"] and len(calls) == 2 and int(b.images[0, 0, 0, 0]) == 2


class LetterData(OmniglotDataModule):
    """A user's own Omniglot datamodule under another name: identified by what it declares."""


class WavesData(SinusoidDataModule):
    class_identity = None  # a datamodule that does not say how its classes are identified


class MisdeclaredData(SinusoidDataModule):
    class_identity = "by_name"


def _configured_targets(group: str) -> set[str]:
    import yaml

    return {t for p in (CONF / group).glob("*.yaml") for t in [(yaml.safe_load(p.read_text()) or {}).get("_target_")] if t}


@pytest.mark.parametrize("group", ["dataset", "target"])
def test_every_configured_data_declares_its_class_identity(group):
    targets = _configured_targets(group)
    assert len(targets) >= 3
    assert {t: class_identity({"_target_": t}) for t in targets if class_identity({"_target_": t}) not in IDENTITIES} == {}


def test_class_identity_is_declared_not_named(tmp_path):
    here = f"{__name__}."
    # Another class name, the same declaration: Lake's characters, not "no class identities".
    classes = dataset_classes({"_target_": here + "LetterData", "split": "lake"})
    assert classes is not None and classes.source == OMNIGLOT and len(classes.splits["test"]) == 659
    # Declared without classes: an old checkpoint of it needs no check; undeclared: it is refused.
    assert class_identity({"_target_": "metaft.data.SinusoidDataModule"}) == NO_CLASSES
    scored = image_classes("mini_imagenet")
    old = {"metaft_config": {"dataset": {"_target_": "metaft.data.SinusoidDataModule"}}}
    assert check_unseen(old, scored, "test", "x", "c")["class_check"] == "the checkpoint was trained on data without classes"
    undeclared = {"metaft_config": {"dataset": {"_target_": here + "WavesData"}}}
    assert dataset_classes(undeclared["metaft_config"]["dataset"]) is None
    with pytest.raises(ValueError, match="does not store the classes it was trained on"):
        check_unseen(undeclared, scored, "test", "x", "c")
    gone = {"metaft_config": {"dataset": {"_target_": "metaft.data.GoneDataModule"}}}
    with pytest.raises(ValueError, match="does not store the classes it was trained on"):
        check_unseen(gone, scored, "test", "x", "c")
    with pytest.raises(ValueError, match=r"MisdeclaredData declares class_identity='by_name'; it must be one of"):
        class_identity({"_target_": here + "MisdeclaredData"})
