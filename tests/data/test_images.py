"""The image benchmarks on miniatures in their distributed layouts (``miniatures.py``): every
reader's episodes against the images it was given (each carries its class and number), the
memory-mapped cache, augmentation against pixel references, errors for missing, wrong and
truncated files, and stage 1, cross-domain evaluation and stage 2 through the real Hydra configs."""
from __future__ import annotations

import gzip
import json
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from metaft.data import split_generator
from metaft.data.images import FewShotImages
from metaft.data.images.augment import augment, pad_crop
from metaft.data.images.source import BadFileError, packaged_classes
from metaft.data.images.target import ImageTarget
from metaft.run import main
from tests.data import miniatures as mn

MINI = mn.split_classes("mini_imagenet")
RAW = {"mean": None, "std": None}  # pixel values as stored, /255: the marks stay readable


def marks(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(class number, image number) from pixel (0, 0) of images ``[..., 3, S, S]`` in [0, 1]."""
    px = (x[..., :, 0, 0] * 255).round().long()
    assert (px[..., 2] == 7).all(), "a mark was lost: the image is not one the miniature wrote"
    return px[..., 0], px[..., 1]


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


def test_sampling_is_far_faster_than_a_meta_step(tmp_path):
    """Drawing a 5-way 1-shot 15-query meta-batch of 4 at 84 px against one forward pass of its
    images through the smallest network a recipe uses (Conv4 with 32 filters): a meta-step costs
    at least two forward passes and a backward, so this bounds its share of a meta-step."""
    from metaft.models import Conv4

    classes = {s: packaged_classes("mini_imagenet", s)[:5] for s in ("train", "val", "test")}
    mn.mini_pickle(tmp_path, classes, per_class=20)
    dm = FewShotImages("mini_imagenet", str(tmp_path), class_lists=classes, cache_dir=str(tmp_path / "c"), ways=5,
                       shots=1, queries=15, mean=[0.5] * 3, std=[0.25] * 3)
    dm.sample("train", 4, split_generator(0, "train"))  # decode once
    t0 = time.perf_counter()
    episodes = [dm.sample("train", 4, split_generator(0, "train", i)) for i in range(5)]
    sample = (time.perf_counter() - t0) / 5
    net = Conv4(3, 84, 32, 5)
    x = torch.cat([episodes[0].support_x, episodes[0].query_x], 1).flatten(0, 1)
    with torch.no_grad():
        net(x[:8])
        t0 = time.perf_counter()
        for task in x.split(x.shape[0] // 4):  # task by task, as the CPU path runs them
            net(task)
        forward = time.perf_counter() - t0
    assert sample * 10 < forward, f"sampling {sample * 1e3:.1f} ms against a forward pass of {forward * 1e3:.1f} ms"


def test_augmentation_against_pixel_references():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 3, 10, 12)
    out = pad_crop(x, 2, torch.Generator().manual_seed(1))
    gg = torch.Generator().manual_seed(1)
    dy, dx = torch.randint(0, 5, (5,), generator=gg), torch.randint(0, 5, (5,), generator=gg)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(5):  # each output is a window of its own zero-padded image
        assert torch.equal(out[i], padded[i, :, dy[i]:dy[i] + 10, dx[i]:dx[i] + 12])
    flipped = augment(x, torch.Generator().manual_seed(2), crop=None, flip=True)
    mask = torch.rand(5, generator=torch.Generator().manual_seed(2)) < 0.5
    for i in range(5):
        assert torch.equal(flipped[i], x[i].flip(-1) if mask[i] else x[i])
    jittered = augment(x, g, crop="resized", jitter=0.4)
    assert jittered.shape == x.shape and jittered.min() >= 0 and jittered.max() <= 1
    again = augment(x, torch.Generator().manual_seed(0), crop="resized", jitter=0.4)
    assert torch.equal(jittered, again)


def test_augment_changes_training_images_only(tmp_path):
    mn.mini_pickle(tmp_path, MINI)
    kw = dict(class_lists=MINI, cache_dir=str(tmp_path / "c"), ways=3, shots=1, queries=2, **RAW)
    plain = FewShotImages("mini_imagenet", str(tmp_path), **kw)
    aug = FewShotImages("mini_imagenet", str(tmp_path), augment=True, augment_jitter=0.4, **kw)
    g = lambda split: split_generator(0, split)
    assert not torch.equal(plain.sample("train", 2, g("train")).support_x, aug.sample("train", 2, g("train")).support_x)
    # the classes and images drawn are the same; augmentation comes after the draw
    assert torch.equal(plain.sample("train", 2, g("train")).support_y, aug.sample("train", 2, g("train")).support_y)
    assert torch.equal(plain.sample("test", 2, g("test")).query_x, aug.sample("test", 2, g("test")).query_x)


# ----------------------------------------------------------------------------------- errors
def test_missing_files_say_which_file_goes_where(tmp_path):
    for layout, file in (("pickle", "mini-imagenet-cache-train.pkl"), ("metaoptnet",
                         "miniImageNet_category_split_train_phase_train.pickle"), ("csv", "train.csv")):
        with pytest.raises(FileNotFoundError, match=rf"needs {file} in dataset.data_dir={tmp_path}"):
            FewShotImages("mini_imagenet", str(tmp_path), layout=layout)
    with pytest.raises(FileNotFoundError, match=r"cifar-100-python.tar.gz.*dataset.download=true"):
        FewShotImages("cifar_fs", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"CUB_200_2011.tgz.*dataset.download=true"):
        FewShotImages("cub", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"mini_imagenet has no stable official download address; dataset "
                       r"mini_imagenet needs mini-imagenet-cache-train.pkl in dataset.data_dir="):
        FewShotImages("mini_imagenet", str(tmp_path), download=True)
    with pytest.raises(ValueError, match=r"dataset.layout must be one of pickle, metaoptnet, csv"):
        FewShotImages("mini_imagenet", str(tmp_path), layout="hdf5")
    with pytest.raises(ValueError, match=r"dataset=image_folder needs dataset.class_lists"):
        FewShotImages("image_folder", str(tmp_path))


def test_truncated_and_wrong_files_are_named(tmp_path):
    mn.mini_pickle(tmp_path, MINI)
    path = tmp_path / "mini-imagenet-cache-val.pkl"
    path.write_bytes(path.read_bytes()[:5000])
    dm = FewShotImages("mini_imagenet", str(tmp_path), class_lists=MINI, cache_dir=str(tmp_path / "c"), ways=3)
    with pytest.raises(BadFileError, match=r"mini-imagenet-cache-val.pkl: cannot be read as a pickle"):
        dm.store("val")
    # the test file in the training file's place: its classes are not the training split's
    (tmp_path / "mini-imagenet-cache-train.pkl").write_bytes((tmp_path / "mini-imagenet-cache-test.pkl").read_bytes())
    with pytest.raises(BadFileError, match=r"mini-imagenet-cache-train.pkl: its classes are not the 4 classes of the train"):
        dm.store("train")
    with open(tmp_path / "mini-imagenet-cache-test.pkl", "wb") as f:
        pickle.dump({"image_data": np.zeros((3, 84, 84), np.float32), "class_dict": {}}, f)
    with pytest.raises(BadFileError, match=r"image_data is ndarray float32 \[3, 84, 84\], expected uint8"):
        dm.store("test")


def test_archives_checksum_and_truncation(tmp_path):
    archive = mn.cifar100(tmp_path)
    with pytest.raises(BadFileError, match=r"cifar-100-python.tar.gz: MD5 [0-9a-f]{32} .*published file has MD5 "
                       r"eb9058c3a382ffc7106e4002c42a8d85"):
        FewShotImages("cifar_fs", str(tmp_path), image_size=32, cache_dir=str(tmp_path / "c")).store("train")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(BadFileError, match=r"cifar-100-python.tar.gz: is not a readable CIFAR-100 archive"):
        FewShotImages("cifar_fs", str(tmp_path), image_size=32, verify=False, cache_dir=str(tmp_path / "c")).store("val")
    classes = mn.split_classes("cub", (2, 2, 2))
    tgz = mn.cub(tmp_path, [c for v in classes.values() for c in v])
    tgz.write_bytes(gzip.compress(gzip.decompress(tgz.read_bytes())[:3000]))
    with pytest.raises(BadFileError, match=r"CUB_200_2011.tgz"):
        FewShotImages("cub", str(tmp_path), class_lists=classes, verify=False, cache_dir=str(tmp_path / "c")).store("test")


def test_bad_settings(tmp_path):
    mn.mini_pickle(tmp_path, MINI)
    kw = {"class_lists": MINI, "cache_dir": str(tmp_path / "c")}
    with pytest.raises(ValueError, match=r"dataset.ways=4 but the val split of mini_imagenet has only 3 classes"):
        FewShotImages("mini_imagenet", str(tmp_path), ways=4, **kw).store("val")
    with pytest.raises(ValueError, match=r"dataset.shots \+ queries = 9 but a class of the train split"):
        FewShotImages("mini_imagenet", str(tmp_path), ways=2, shots=4, queries=5, **kw).store("train")
    with pytest.raises(ValueError, match=r"dataset.mean and dataset.std"):
        FewShotImages("mini_imagenet", str(tmp_path), mean=[0.5], std=[0.2, 0.2, 0.2], **kw)
    with pytest.raises(ValueError, match=r"dataset.channels must be 1"):
        FewShotImages("mini_imagenet", str(tmp_path), channels=2, **kw)


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


# ------------------------------------------------------------------- through the entry point
def _lists(classes: dict[str, list[str]]) -> str:
    return "{" + ",".join(f"{s}:[{','.join(c)}]" for s, c in classes.items()) + "}"


FAST = ["trainer.max_steps=2", "trainer.val_check_interval=2", "checkpoint.every_n_train_steps=2",
        "dataset.val_episodes=2", "dataset.test_episodes=3", "dataset.meta_batch_size=2", "dataset.eval_batch_size=3",
        "dataset.ways=3", "dataset.queries=2", "dataset.image_size=32", "model=resnet12", "model.channels=[4,4,6,8]",
        "progress=log"]


@pytest.mark.parametrize("algorithm", ["maml", "protonet", "pretrain"])
def test_train_on_mini_imagenet_then_cross_domain_eval_and_finetune_on_cub(run_config, tmp_path, algorithm):
    mini, cub_dir, cache = tmp_path / "mini", tmp_path / "cub", tmp_path / "cache"
    mini.mkdir(), cub_dir.mkdir()
    mn.mini_pickle(mini, MINI)
    cub = mn.split_classes("cub", (3, 3, 3))
    mn.cub(cub_dir, [c for v in cub.values() for c in v], per_class=8)
    cfg = run_config("train", [f"algorithm={algorithm}", "dataset=mini_imagenet", f"dataset.data_dir={mini}",
                               f"dataset.cache_dir={cache}", f"dataset.class_lists={_lists(MINI)}", *FAST], "train")
    assert cfg.model.in_channels == 3 and cfg.model.image_size == 32
    results = main(cfg) or json.loads((Path(cfg.hydra.runtime.output_dir) / "results.json").read_text())
    assert results["test/episodes"] == 3 and 0 <= results["test/acc"] <= 100
    ckpt = results["ckpt"]
    # cross-domain: the checkpoint's model, CUB's test classes
    ev = run_config("eval", [f"ckpt_path={ckpt}", "dataset=cub", f"dataset.data_dir={cub_dir}", f"dataset.cache_dir={cache}",
                             f"dataset.class_lists={_lists(cub)}", "dataset.verify=false", "dataset.image_size=32",
                             "dataset.ways=3", "dataset.queries=2", "dataset.test_episodes=4", "dataset.eval_batch_size=2"], "eval")
    main(ev)
    res = json.loads((Path(ev.hydra.runtime.output_dir) / "results.json").read_text())
    assert res["test/episodes"] == 4
    stored = json.loads(json.dumps(__import__("omegaconf").OmegaConf.to_container(
        __import__("omegaconf").OmegaConf.load(Path(ev.hydra.runtime.output_dir) / "eval_config.yaml"))))
    assert stored["dataset"]["name"] == "cub" and stored["model"]["channels"] == [4, 4, 6, 8]
    init = "init=pretrained" if algorithm == "pretrain" else "init=meta"
    ft = run_config("finetune", [f"meta_ckpt={ckpt}", init, "target=cub", f"target.data_dir={cub_dir}",
                                 f"target.cache_dir={cache}", f"target.class_lists={_lists(cub)}", "target.verify=false",
                                 "target.image_size=32", "target.ways=3", "target.shots=2", "target.val_per_class=2",
                                 "target.test_per_class=3", "trainer.max_steps=3", "trainer.val_check_interval=3",
                                 "progress=log"], "finetune")
    main(ft)
    res = json.loads((Path(ft.hydra.runtime.output_dir) / "results.json").read_text())
    assert res["test_examples"] == 9 and set(res["target_classes"]) <= set(cub["test"])
    # evaluation and fine-tuning on CUB decoded its test split only
    assert sorted(p.name.split("_")[1] for p in cache.iterdir() if p.name.startswith("cub_")) == ["test"]


def test_image_folder_stage_1_and_2_with_conv4_at_84_px(run_config, tmp_path):
    names = [f"kind_{i}" for i in range(9)]
    mn.image_folder(tmp_path / "imgs", names, per_class=8, size=40)
    for s, part in (("train", names[:3]), ("val", names[3:6]), ("test", names[6:])):
        (tmp_path / f"{s}.txt").write_text("\n".join(part) + "\n")
    lists = [f"dataset.class_lists.{s}={tmp_path / s}.txt" for s in ("train", "val", "test")]
    overrides = [o for o in FAST if not o.startswith(("model", "dataset.image_size"))]
    cfg = run_config("train", ["dataset=image_folder", f"dataset.data_dir={tmp_path / 'imgs'}",
                               f"dataset.cache_dir={tmp_path / 'c'}", *lists, "model=conv4_84", "model.filters=4",
                               "algorithm=protonet", *overrides], "train")
    assert cfg.model.in_channels == 3 and cfg.model.image_size == 84
    main(cfg)
    res = json.loads((Path(cfg.hydra.runtime.output_dir) / "results.json").read_text())
    assert res["test/episodes"] == 3
    ft = run_config("finetune", [f"meta_ckpt={res['ckpt']}", "target=image_folder",
                                 f"target.data_dir={tmp_path / 'imgs'}", f"target.cache_dir={tmp_path / 'c'}",
                                 *[o.replace("dataset.", "target.") for o in lists], "target.ways=3", "target.shots=2",
                                 "target.val_per_class=2", "target.test_per_class=3", "trainer.max_steps=2",
                                 "trainer.val_check_interval=2", "progress=log"], "finetune")
    main(ft)
    out = json.loads((Path(ft.hydra.runtime.output_dir) / "results.json").read_text())
    assert out["train_examples"] == 6 and sorted(out["target_classes"]) == names[6:]


@pytest.mark.parametrize("algorithm,model,filters,batch", [
    ("maml", "Conv4", 32, 4), ("fomaml", "Conv4", 32, 4), ("anil", "Conv4", 32, 4), ("metasgd", "Conv4", 32, 4),
    ("protonet", "Conv4", 64, 1), ("reptile", "Conv4", 32, 5), ("metaoptnet", "ResNet12", None, 8),
    ("pretrain", "ResNet12", None, 4)])
def test_mini_imagenet_paper_recipes_compose(run_config, algorithm, model, filters, batch):
    import hydra

    cfg = run_config("train", ["experiment=mini_imagenet_paper", f"algorithm={algorithm}"], algorithm)
    assert cfg.dataset.name == "mini_imagenet" and cfg.dataset.queries in (1, 6, 15)
    assert cfg.dataset.meta_batch_size == batch and cfg.model.in_channels == 3 and cfg.model.image_size == 84
    net = hydra.utils.instantiate(cfg.model)
    assert type(net).__name__ == model
    if model == "Conv4":
        assert cfg.model.filters == filters and net.feature_dim == filters * 5 * 5
    else:  # MetaOptNet flattens the last map, RFS averages it
        assert net.feature_dim == (16000 if algorithm == "metaoptnet" else 640)


@pytest.mark.slow
def test_two_ranks_read_the_cache_and_give_the_one_rank_update(run_config, tmp_path):
    """hardware=ddp_cpu spawns two processes, each with a pickled copy of the datamodule (which
    reopens the memory-mapped cache) and its share of every meta-batch and test batch."""
    (tmp_path / "mini").mkdir()
    mn.mini_pickle(tmp_path / "mini", MINI)
    runs = {}
    for hw in ("cpu", "ddp_cpu"):
        cfg = run_config("train", ["algorithm=protonet", "dataset=mini_imagenet", f"dataset.data_dir={tmp_path / 'mini'}",
                                   f"dataset.cache_dir={tmp_path / 'cache'}", f"dataset.class_lists={_lists(MINI)}",
                                   *FAST, "trainer.max_steps=3", "dataset.test_episodes=4", f"hardware={hw}"], hw)
        main(cfg)
        out = Path(cfg.hydra.runtime.output_dir)
        runs[hw] = (torch.load(out / "checkpoints" / "last.ckpt", weights_only=True),
                    json.loads((out / "results.json").read_text()))
    (one, r1), (two, r2) = runs["cpu"], runs["ddp_cpu"]
    diff = max((one["state_dict"][k] - two["state_dict"][k]).abs().max().item() for k in one["state_dict"])
    assert diff < 1e-5
    assert r1["test/episodes"] == r2["test/episodes"] == 4
    assert r2["test/acc"] == pytest.approx(r1["test/acc"], rel=1e-4)


def test_download_checks_the_md5_and_leaves_no_partial_file(tmp_path, monkeypatch):
    import hashlib
    import io
    import urllib.request

    from metaft.data.images import cifar

    source = tmp_path / "served"
    source.mkdir()
    payload = mn.cifar100(source).read_bytes()
    asked = []

    def urlopen(url, timeout=None):
        asked.append(url)
        return io.BytesIO(payload)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    data = tmp_path / "data"
    with pytest.raises(BadFileError, match=r"does not have the published MD5 eb9058c3a382ffc7106e4002c42a8d85"):
        FewShotImages("cifar_fs", str(data), download=True, image_size=32)
    assert asked == [cifar.URL] and not list(data.iterdir())  # nothing left behind
    monkeypatch.setattr(cifar, "MD5", hashlib.md5(payload).hexdigest())  # as if the miniature were the official file
    dm = FewShotImages("cifar_fs", str(data), download=True, image_size=32, queries=3, cache_dir=str(tmp_path / "c"), **RAW)
    assert (data / cifar.ARCHIVE).read_bytes() == payload and [p.name for p in data.iterdir()] == [cifar.ARCHIVE]
    assert dm.num_classes("test") == 20


def test_damaged_cache_is_rebuilt_and_bad_images_are_named(tmp_path):
    mn.tiered(tmp_path, MINI)
    kw = dict(class_lists=MINI, cache_dir=str(tmp_path / "c"), ways=3, shots=1, queries=2, **RAW)
    good = np.asarray(FewShotImages("tiered_imagenet", str(tmp_path), **kw).store("val").images).copy()
    (store_dir,) = [p for p in (tmp_path / "c").iterdir() if p.name.startswith("tiered_imagenet_val")]
    images = store_dir / "images.u8"
    images.write_bytes(images.read_bytes()[:1000])  # a truncated cache file: only a cache, decoded again
    assert np.array_equal(np.asarray(FewShotImages("tiered_imagenet", str(tmp_path), **kw).store("val").images), good)
    path = tmp_path / "test_images_png.pkl"
    pngs = pickle.loads(path.read_bytes())
    pngs[2] = pngs[2][:40]  # one truncated PNG
    path.write_bytes(pickle.dumps(pngs))
    with pytest.raises(BadFileError, match=r"test_images_png.pkl: image \d+ cannot be decoded as an image"):
        FewShotImages("tiered_imagenet", str(tmp_path), **kw).store("test")
    path = tmp_path / "val_labels.pkl"
    labels = pickle.loads(path.read_bytes())
    labels["label_specific"] = labels["label_specific"][:-1]
    path.write_bytes(pickle.dumps(labels))
    with pytest.raises(BadFileError, match=r"val_images_png.pkl: holds 18 images, val_labels.pkl labels 17"):
        FewShotImages("tiered_imagenet", str(tmp_path), **kw).store("val")


def test_class_table_draws_uniformly_among_unequal_classes():
    from metaft.data.images.episodes import ClassTable
    from metaft.data.images.store import ImageStore

    labels = np.repeat(np.arange(3), [3, 5, 10])[np.random.default_rng(0).permutation(18)]
    store = ImageStore(np.zeros((18, 1, 1, 3), np.uint8), labels, ["a", "b", "c"])
    rows = ClassTable(store).draw(6000, 2, 3, torch.Generator().manual_seed(0))
    assert rows.shape == (6000, 2, 3) and rows.min() >= 0  # never a padding slot of a small class
    cls = torch.from_numpy(labels)[rows]
    assert (cls == cls[..., :1]).all() and (cls[:, 0] != cls[:, 1]).all()
    assert all(len(set(r)) == 3 for r in rows.view(-1, 3).tolist()[:500])  # distinct images
    # each class in 2/3 of the tasks, and every image of a class equally often
    freq = torch.bincount(cls[..., 0].flatten(), minlength=3) / 6000
    torch.testing.assert_close(freq, torch.full((3,), 2 / 3), atol=0.03, rtol=0)
    for c, size in enumerate((3, 5, 10)):
        hits = torch.bincount(rows[cls == c].flatten(), minlength=18)[torch.from_numpy(np.flatnonzero(labels == c))]
        torch.testing.assert_close(hits.float() / hits.sum(), torch.full((size,), 1 / size), atol=0.02, rtol=0)


def test_resized_crop_of_the_whole_image_is_the_image():
    from metaft.data.images.augment import resized_crop

    x = torch.rand(4, 3, 12, 12)
    same = resized_crop(x, torch.Generator().manual_seed(0), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    torch.testing.assert_close(same, x, atol=1e-5, rtol=0)
    # a quarter-area box of a half-size side is a 2x enlargement of a 6x6 window: a constant
    # image stays constant, and the crop never reads outside the image (values stay in range)
    crop = resized_crop(x, torch.Generator().manual_seed(1), scale=(0.25, 0.25), ratio=(1.0, 1.0))
    assert crop.min() >= x.min() and crop.max() <= x.max()
    flat = resized_crop(torch.full((2, 3, 12, 12), 0.3), torch.Generator().manual_seed(1), scale=(0.25, 0.25))
    torch.testing.assert_close(flat, torch.full_like(flat, 0.3))
