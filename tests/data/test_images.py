"""Every image benchmark's reader on miniatures in its distributed layout (``miniatures.py``):
episodes against the images it was given (each carries its class and number), the standard
splits, the memory-mapped cache, normalisation, lazily read evaluation episodes, and the
fine-tuning target."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from metaft.data import split_generator
from metaft.data.images import FewShotImages
from metaft.data.images.source import BadFileError, packaged_classes
from metaft.finetune.image_targets import ImageTarget
from tests.data import miniatures as mn
from tests.data.miniatures import MINI, RAW, marks


def check_episodes(dm: FewShotImages, split: str, names: list[str], per_class: int) -> None:
    """Each episode label holds images of one class of ``split``, distinct, the classes of a task
    distinct, and the labels 0..ways-1 in blocks of shots / queries."""
    ep = dm.sample(split, 6, split_generator(0, split))
    ways, s = dm.split_ways(split), dm.shots
    q = ep.query_x.shape[1] // ways
    assert ep.support_x.shape == (6, ways * s, 3, dm.image_size, dm.image_size)
    assert torch.equal(ep.support_y[0], torch.arange(ways).repeat_interleave(s))
    assert torch.equal(ep.query_y[3], torch.arange(ways).repeat_interleave(q))
    cls_s, idx_s = marks(ep.support_x.view(6, ways, s, 3, dm.image_size, dm.image_size))
    cls_q, idx_q = marks(ep.query_x.view(6, ways, q, 3, dm.image_size, dm.image_size))
    cls, idx = torch.cat([cls_s, cls_q], 2), torch.cat([idx_s, idx_q], 2)
    assert (cls == cls[..., :1]).all()  # one class per label
    for t in range(6):
        assert len(set(cls[t, :, 0].tolist())) == ways
        for w in range(ways):
            assert len(set(idx[t, w].tolist())) == s + q
    assert cls.max() < len(names) and idx.max() < per_class
    # the store's class names follow the split list: class number i of the miniature is names[i]
    assert dm.class_names(split) == names


@pytest.mark.parametrize("layout,write", [("pickle", mn.mini_pickle), ("metaoptnet", mn.mini_metaoptnet)])
def test_mini_imagenet_array_layouts(tmp_path, layout, write):
    write(tmp_path, MINI)
    dm = FewShotImages("mini_imagenet", str(tmp_path), layout=layout, class_lists=MINI, cache_dir=str(tmp_path / "c"),
                       ways=3, shots=2, queries=3, **RAW)
    for split in ("train", "val", "test"):
        check_episodes(dm, split, MINI[split], 8)


def test_mini_imagenet_csv_layout_resizes_jpegs(tmp_path):
    mn.mini_csv(tmp_path, MINI)
    dm = FewShotImages("mini_imagenet", str(tmp_path), layout="csv", class_lists=MINI, cache_dir=str(tmp_path / "c"),
                       ways=3, shots=1, queries=2, **RAW)
    ep = dm.sample("test", 4, split_generator(0, "test"))
    assert ep.query_x.shape == (4, 6, 3, 84, 84)
    # flat colours: every image of a label is its class's colour (JPEG within a few levels)
    colours = torch.tensor([mn.colour(i) for i in range(3)], dtype=torch.float) / 255
    for x, y in ((ep.support_x, ep.support_y), (ep.query_x, ep.query_y)):
        mean = x.mean((-2, -1))  # [tasks, n, 3]
        cls = (mean[..., None, :] - colours).abs().sum(-1).argmin(-1)
        assert ((mean - colours[cls]).abs() < 3 / 255).all()
        for t in range(4):
            assert len({(int(yy), int(c)) for yy, c in zip(y[t], cls[t])}) == 3  # one colour per label


def test_tiered_imagenet_pngs(tmp_path):
    mn.tiered(tmp_path, MINI)
    dm = FewShotImages("tiered_imagenet", str(tmp_path), class_lists=MINI, cache_dir=str(tmp_path / "c"),
                       ways=3, shots=1, queries=4, **RAW)
    for split in ("train", "test"):
        check_episodes(dm, split, MINI[split], 6)


def test_tiered_imagenet_checks_the_split_without_lists(tmp_path):
    # the distributed files name classes in words: only their number can be checked
    words = {s: [f"synset name {s} {i}" for i in range(4)] for s in ("train", "val", "test")}
    mn.tiered(tmp_path, words)
    with pytest.raises(BadFileError, match=r"train_labels.pkl: has 4 classes, tiered-ImageNet's train split has 351"):
        FewShotImages("tiered_imagenet", str(tmp_path), cache_dir=str(tmp_path / "c")).store("train")
    # wnids are checked against Ren et al.'s lists: val classes in the test file's place are refused
    tiered = {s: packaged_classes("tiered_imagenet", s) for s in ("train", "val", "test")}
    assert [len(c) for c in tiered.values()] == [351, 97, 160] and len({c for v in tiered.values() for c in v}) == 608
    mn.tiered(tmp_path, {"test": tiered["val"][:3]}, per_class=2)
    with pytest.raises(BadFileError, match=r"test_labels.pkl: its classes are not the 160 classes of the test split"):
        FewShotImages("tiered_imagenet", str(tmp_path), cache_dir=str(tmp_path / "c")).store("test")


@pytest.mark.parametrize("name,counts", [("cifar_fs", (64, 16, 20)), ("fc100", (60, 20, 20))])
def test_cifar_benchmarks_use_the_standard_splits(tmp_path, name, counts):
    mn.cifar100(tmp_path)
    dm = FewShotImages(name, str(tmp_path), image_size=32, verify=False, cache_dir=str(tmp_path / "c"),
                       ways=5, shots=2, queries=4, **RAW)
    fine = sorted([c for s in ("train", "val", "test") for c in packaged_classes("cifar_fs", s)])
    coarse = sorted([c for s in ("train", "val", "test") for c in packaged_classes("fc100", s)])
    seen = []
    for split, n in zip(("train", "val", "test"), counts):
        names = dm.class_names(split)
        assert len(names) == n
        if name == "cifar_fs":
            assert names == packaged_classes("cifar_fs", split)
        else:  # every class of the split's superclasses (the miniature puts fine class i in superclass i // 5)
            supers = {coarse.index(c) for c in packaged_classes("fc100", split)}
            assert sorted(names) == sorted(f for i, f in enumerate(fine) if i // 5 in supers)
        seen += names
        ep = dm.sample(split, 3, split_generator(1, split))
        cls, _ = marks(ep.support_x)
        # the mark is CIFAR's fine label: it must be the named class of the episode's label
        for t in range(3):
            for k in range(ep.support_y.shape[1]):
                assert fine[int(cls[t, k])] in names
        assert len(set(cls[0].tolist())) == 5
    assert len(set(seen)) == sum(counts)  # disjoint splits


def test_cub_archive_and_folder_read_the_same(tmp_path):
    classes = mn.split_classes("cub", (3, 3, 3))
    mn.cub(tmp_path, [c for v in classes.values() for c in v])
    a = FewShotImages("cub", str(tmp_path), class_lists=classes, verify=False, cache_dir=str(tmp_path / "c"),
                      ways=3, shots=1, queries=2, **RAW)
    import tarfile

    unpacked = tmp_path / "unpacked"
    with tarfile.open(tmp_path / "CUB_200_2011.tgz") as tar:
        tar.extractall(unpacked, filter="data")
    b = FewShotImages("cub", str(unpacked), class_lists=classes, cache_dir=str(tmp_path / "c"), ways=3, shots=1,
                      queries=2, **RAW)
    for split in ("train", "test"):
        assert np.array_equal(np.asarray(a.store(split).images), np.asarray(b.store(split).images))
        assert a.class_names(split) == classes[split]
    assert a.num_classes("train") == 3 and len(a.store("train").labels) == 18


def test_cub_standard_split_is_chen_et_al():
    names = sorted([c for s in ("train", "val", "test") for c in packaged_classes("cub", s)])
    assert len(names) == 200 and names[0] == "001.Black_footed_Albatross" and names[-1].startswith("200.")
    assert packaged_classes("cub", "train") == names[0::2]
    assert packaged_classes("cub", "val") == names[1::4]
    assert packaged_classes("cub", "test") == names[3::4]
    mini = [packaged_classes("mini_imagenet", s) for s in ("train", "val", "test")]
    assert [len(m) for m in mini] == [64, 16, 20] and len({c for m in mini for c in m}) == 100
    assert "n01532829" in mini[0] and "n01855672" in mini[1] and "n01930112" in mini[2]


def test_image_folder_and_cache_reuse(tmp_path, monkeypatch):
    names = [f"class_{i}" for i in range(6)]
    mn.image_folder(tmp_path / "imgs", names)
    lists = {"train": names[:2], "val": names[2:4], "test": names[4:]}
    kw = dict(class_lists=lists, cache_dir=str(tmp_path / "c"), image_size=28, ways=2, shots=1, queries=2, **RAW)
    dm = FewShotImages("image_folder", str(tmp_path / "imgs"), **kw)
    first = np.asarray(dm.store("test").images).copy()
    assert isinstance(dm.store("test").images, np.memmap)
    assert first.shape == (12, 28, 28, 3)
    # flat colour of class 4 (names[4] is the test split's class 0)
    assert np.abs(first[:6].astype(int) - np.array(mn.colour(4))).max() <= 1
    assert not [p for p in (tmp_path / "c").iterdir() if p.name.startswith(".")]  # no temporary left behind
    again = FewShotImages("image_folder", str(tmp_path / "imgs"), **kw)
    monkeypatch.setattr(again.reader, "read", lambda *a: pytest.fail("the cache was not reused"))
    assert np.array_equal(np.asarray(again.store("test").images), first)
    # a changed file is a new source: decoded again
    (tmp_path / "imgs" / names[4] / "0.png").unlink()
    third = FewShotImages("image_folder", str(tmp_path / "imgs"), **kw)
    assert len(third.store("test").labels) == 11


def test_episodes_are_deterministic_and_normalised(tmp_path):
    mn.mini_pickle(tmp_path, MINI)
    kw = {"layout": "pickle", "class_lists": MINI, "cache_dir": str(tmp_path / "c"), "ways": 3, "shots": 1, "queries": 2}
    raw = FewShotImages("mini_imagenet", str(tmp_path), **kw, **RAW)
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    norm = FewShotImages("mini_imagenet", str(tmp_path), **kw, mean=mean, std=std)
    a = raw.sample("val", 5, split_generator(3, "val"))
    b = norm.sample("val", 5, split_generator(3, "val"))
    ref = (a.query_x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    torch.testing.assert_close(b.query_x, ref)
    assert torch.equal(raw.sample("val", 5, split_generator(3, "val")).query_x, a.query_x)
    grey = FewShotImages("mini_imagenet", str(tmp_path), **kw, channels=1, **RAW).sample("val", 5, split_generator(3, "val"))
    weights = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
    torch.testing.assert_close(grey.query_x[:, :, 0], (a.query_x * weights).sum(2))
    x, y = raw.labelled_batch("train", 16, split_generator(0, "train"))
    assert x.shape == (16, 3, 84, 84) and torch.equal(marks(x)[0], y)  # the global label is the image's class


def test_evaluation_episodes_are_kept_as_rows_and_pickle_without_images(tmp_path):
    mn.mini_pickle(tmp_path, MINI)
    dm = FewShotImages("mini_imagenet", str(tmp_path), class_lists=MINI, cache_dir=str(tmp_path / "c"), ways=3,
                       shots=1, queries=2, eval_queries=3, test_episodes=7, eval_batch_size=3, seed=4)
    fixed = dm.fixed_episodes("test")
    assert len(fixed) == 3 and [r.shape[0] for r in dm.fixed_rows("test")] == [3, 3, 1]
    # the same episodes the base class would keep: sample() with the split's generator, batch by batch
    g = split_generator(4, "test")
    for i, n in enumerate((3, 3, 1)):
        ref = dm.sample("test", n, g)
        for a, b in zip(fixed[i].__dict__.values(), ref.__dict__.values()):
            assert torch.equal(a, b)
    loaded = list(dm.test_dataloader())
    assert len(loaded) == 3 and torch.equal(loaded[2].query_x, fixed[2].query_x)
    assert len(dm.fingerprint("test")) == 16
    blob = pickle.dumps(dm)  # a spawned DDP process's copy: no images in it
    assert len(blob) < 200_000, len(blob)
    assert torch.equal(pickle.loads(blob).sample("val", 2, split_generator(0, "val")).query_x,
                       dm.sample("val", 2, split_generator(0, "val")).query_x)


def test_target_draws_held_out_classes(tmp_path):
    mn.mini_pickle(tmp_path, MINI, per_class=8)
    t = ImageTarget("mini_imagenet", str(tmp_path), ways=2, shots=3, val_per_class=2, test_per_class=3,
                    class_lists=MINI, cache_dir=str(tmp_path / "c"), seed=1, **RAW)
    assert set(t.class_names()) <= set(MINI["test"]) and len(t.class_names()) == 2
    seen = set()
    for s, n in (("train", 3), ("val", 2), ("test", 3)):
        x, y = t.splits[s]
        assert x.shape == (2 * n, 3, 84, 84) and torch.equal(y, torch.arange(2).repeat_interleave(n))
        cls, idx = marks(x)
        for label in range(2):  # one class per label, the one named
            assert set(cls[y == label].tolist()) == {MINI["test"].index(t.class_names()[label])}
        pairs = set(zip(cls.tolist(), idx.tolist()))
        assert len(pairs) == 2 * n and not pairs & seen  # distinct images, disjoint splits
        seen |= pairs


def test_another_class_list_gets_its_own_cache(tmp_path):
    mn.mini_pickle(tmp_path, MINI)
    kw = {"cache_dir": str(tmp_path / "c"), "ways": 2, "shots": 1, "queries": 2, **RAW}
    a = FewShotImages("mini_imagenet", str(tmp_path), class_lists=MINI, **kw)
    swapped = {**MINI, "test": MINI["test"][::-1]}
    b = FewShotImages("mini_imagenet", str(tmp_path), class_lists=swapped, **kw)
    assert b.class_names("test") == MINI["test"][::-1] and a.class_names("test") == MINI["test"]
    x_a, y_a = a.store("test").images, a.store("test").labels
    x_b, y_b = b.store("test").images, b.store("test").labels
    # the same images, each under its class's new index
    assert marks(torch.from_numpy(np.asarray(x_a[y_a == 0])).permute(0, 3, 1, 2).float() / 255)[0].unique().tolist() == [0]
    assert marks(torch.from_numpy(np.asarray(x_b[y_b == 0])).permute(0, 3, 1, 2).float() / 255)[0].unique().tolist() == [2]
