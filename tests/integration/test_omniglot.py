"""Omniglot on the real data under ``paths.data_dir``: decoding and its cache, the splits, rotations,
episodes, errors, Lake's runs, and a short train + eval through the entry point.

References: the PNGs decoded here independently (numpy area average), Pillow's rotation, the
split files, the zips' member lists, and loops over the cached tensor. The first decode (~7 s) is
paid once per session, into a temporary cache directory.
"""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image, ImageOps

from metaft.data import Episode, OmniglotDataModule, OmniglotRunsDataModule, SinusoidDataModule, split_generator
from metaft.data.omniglot import images as omi
from metaft.data.omniglot import store as om
from metaft.data.omniglot.runs import build_runs, main as runs_main

ROOT = Path(__file__).resolve().parents[2]


def _data_dir() -> Path:
    """``paths.data_dir`` of the real config, relative to the repo root like a run from there."""
    d = Path(OmegaConf.load(ROOT / "conf" / "paths" / "default.yaml").data_dir)
    return d if d.is_absolute() else (ROOT / d).resolve()


DATA = _data_dir()
OMNI = DATA / "omniglot"
pytestmark = pytest.mark.needs_data(OMNI, "Omniglot data")  # skipped without it; an error under CI


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("omniglot_cache")


@pytest.fixture(scope="session")
def vinyals(cache_dir) -> OmniglotDataModule:
    return OmniglotDataModule(str(OMNI), ways=5, shots=1, queries=15, eval_queries=4, cache_dir=str(cache_dir))


def png_bytes(zip_name: str, member: str) -> bytes:
    with zipfile.ZipFile(OMNI / f"{zip_name}.zip") as z:
        return z.read(member)


def drawing(char: str, drawer: int) -> bytes:
    """The PNG of ``ALPHABET/characterNN`` by its ``drawer``-th drawer (file-name order)."""
    for name in ("images_background", "images_evaluation"):
        with zipfile.ZipFile(OMNI / f"{name}.zip") as z:
            members = sorted(n for n in z.namelist() if n.startswith(f"{name}/{char}/"))
            if members:
                return z.read(members[drawer])
    raise KeyError(char)


def area_average(png: bytes, size: int) -> np.ndarray:
    """Independent reference of the preprocessing: ink = 1 - pixel, exact area average to size."""
    ink = 1.0 - np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64) / 255.0
    n = ink.shape[0]
    edges = np.arange(size + 1) * n / size
    w = np.zeros((size, n))  # w[i, p]: overlap of input pixel p with output interval i
    for i in range(size):
        for p in range(n):
            w[i, p] = max(0.0, min(edges[i + 1], p + 1) - max(edges[i], p))
    w /= w.sum(1, keepdims=True)
    return w @ ink @ w.T * 255.0


def class_lookup(dm: OmniglotDataModule, split: str) -> dict[bytes, set[int]]:
    """Image bytes -> the classes of ``split`` holding that image, built from the cached tensor
    with torch.rot90 (not through the sampler's gather)."""
    table: dict[bytes, set[int]] = {}
    for c, (char, k) in enumerate(dm.classes[split].tolist()):
        for img in torch.rot90(dm.images[char], k, dims=(-2, -1)):
            table.setdefault(img.numpy().tobytes(), set()).add(c)
    return table


def to_bytes(x: torch.Tensor) -> bytes:
    return (x.squeeze(0) * 255).round().to(torch.uint8).numpy().tobytes()


def small_zip(path: Path, zip_name: str, chars: int = 2, corrupt: str | None = None) -> Path:
    """A zip of the first ``chars`` characters of a real zip (optionally one member garbled)."""
    with zipfile.ZipFile(OMNI / f"{zip_name}.zip") as src, zipfile.ZipFile(path, "w") as dst:
        names = sorted(n for n in src.namelist() if n.endswith(".png"))[: 20 * chars]
        for n in names:
            dst.writestr(n, b"not a png" if n == corrupt else src.read(n))
    return path


# --------------------------------------------------------------------------- decoding and cache
def test_cache_round_trip_equals_direct_decode(vinyals, cache_dir):
    files = sorted(p.name for p in cache_dir.iterdir())
    assert len(files) == 2 and all("_28px_" in f and f.endswith(".pt") for f in files), files
    cached = torch.load(cache_dir / files[0], weights_only=True)  # images_background
    assert cached["images"].shape == (964, 20, 28, 28) and cached["images"].dtype == torch.uint8
    assert torch.equal(vinyals.images[:964], cached["images"])
    assert vinyals.images.shape == (1623, 20, 28, 28)
    for char, drawer in ((0, 0), (517, 13), (963, 19)):
        ref = area_average(drawing(cached["chars"][char], drawer), 28)
        got = cached["images"][char, drawer].double().numpy()
        assert np.array_equal(got, np.round(ref))
        assert got.max() > 200 and np.median(got) == 0  # ink bright, background dark


def test_cache_key_and_reuse(tmp_path, monkeypatch):
    z = small_zip(tmp_path / "images_background.zip", "images_background")
    cache = tmp_path / "cache"
    chars, imgs = om.load_images(z, 28, cache)
    assert chars == sorted(chars) and len(chars) == 2 and imgs.shape == (2, 20, 28, 28)
    assert torch.equal(imgs, om.decode_zip(z, 28)[1])
    with monkeypatch.context() as m:  # a second load must not decode
        m.setattr(om, "decode_zip", lambda *a: pytest.fail("decoded although cached"))
        again = om.load_images(z, 28, cache)[1]
    assert torch.equal(again, imgs)
    assert om.load_images(z, 14, cache)[1].shape == (2, 20, 14, 14)  # another size: another file
    small_zip(z, "images_background", chars=3)  # changed zip content: another file
    assert om.load_images(z, 28, cache)[1].shape[0] == 3
    assert len(list(cache.glob("*.pt"))) == 3 and not list(cache.glob(".*tmp"))


# ------------------------------------------------------------------------------------- splits
def test_vinyals_split_matches_files_and_is_disjoint(vinyals):
    chars = {}
    for split, n in (("train", 1028), ("val", 172), ("test", 423)):
        lines = (OMNI / "splits" / "vinyals" / f"{split}.txt").read_text().split()
        assert vinyals.class_names(split) == lines
        assert vinyals.num_classes(split) == 4 * n
        table = vinyals.classes[split]
        chars[split] = set(table[:, 0].tolist())
        assert len(chars[split]) == n
        assert sorted(table[:, 1].bincount().tolist()) == [n] * 4  # every character in 4 rotations
    assert not (chars["train"] & chars["val"]) and not (chars["train"] & chars["test"]) and not (chars["val"] & chars["test"])


def test_lake_split_uses_background_for_train_val_and_evaluation_for_test(cache_dir):
    dm = OmniglotDataModule(str(OMNI), split="lake", lake_val_alphabets=5, cache_dir=str(cache_dir))
    with zipfile.ZipFile(OMNI / "images_background.zip") as z:
        background = {"/".join(n.split("/")[1:3]) for n in z.namelist() if n.endswith(".png")}
    alphabets = sorted({c.split("/")[0] for c in background})
    names = {s: {n.rsplit("/", 1)[0] for n in dm.class_names(s)} for s in ("train", "val", "test")}
    assert names["train"] | names["val"] == background and not names["train"] & names["val"]
    assert {n.split("/")[0] for n in names["val"]} == set(alphabets[-5:])
    assert len(names["test"]) == 659 and not names["test"] & background
    assert all(n.endswith("/rot000") for s in ("train", "val", "test") for n in dm.class_names(s))
    rotated = OmniglotDataModule(str(OMNI), split="lake", rotations=True, cache_dir=str(cache_dir))
    assert [rotated.num_classes(s) for s in ("train", "val", "test")] == [4 * dm.num_classes(s) for s in ("train", "val", "test")]
    only_upright = OmniglotDataModule(str(OMNI), rotations=False, cache_dir=str(cache_dir))
    assert [only_upright.num_classes(s) for s in ("train", "val", "test")] == [1028, 172, 423]


def test_rotation_is_pil_counter_clockwise(vinyals):
    names = vinyals.class_names("train")
    c = names.index("Angelic/character01/rot090")
    char = vinyals.classes["train"][c, 0].item()
    img = Image.open(io.BytesIO(drawing("Angelic/character01", 3)))
    got = vinyals.gather(vinyals.classes["train"][c], torch.tensor([3]))[0, 0] * 255
    # The split authors' convention: PIL's rotate(DDD) (counter-clockwise) of the original.
    assert torch.equal(got, omi.preprocess(img.rotate(90), 28).float())
    assert not torch.equal(got, omi.preprocess(img.rotate(270), 28).float())
    assert torch.equal(got.to(torch.uint8), torch.rot90(vinyals.images[char, 3], 1))


# ------------------------------------------------------------------------------------ episodes
def test_episode_shapes_labels_and_classes_by_value(vinyals):
    ep = vinyals.sample("train", 6, split_generator(3, "train", 5))
    assert ep.support_x.shape == (6, 5, 1, 28, 28) and ep.query_x.shape == (6, 75, 1, 28, 28)
    assert ep.support_x.dtype == torch.float32 and 0 <= ep.support_x.min() and ep.query_x.max() <= 1
    assert torch.equal(ep.query_y[0], torch.arange(5).repeat_interleave(15))
    assert torch.equal(ep.support_y, torch.arange(5).expand(6, 5))
    lookup = class_lookup(vinyals, "train")
    for t in range(6):
        found = []
        for label in range(5):
            imgs = [ep.support_x[t, i] for i in (ep.support_y[t] == label).nonzero().flatten()]
            imgs += [ep.query_x[t, i] for i in (ep.query_y[t] == label).nonzero().flatten()]
            keys = [to_bytes(x) for x in imgs]
            assert len(set(keys)) == 16  # 16 different drawings
            common = set.intersection(*(lookup[k] for k in keys))  # one class holds all 16
            assert common, (t, label)
            found.append(common)
        assert all(not (a & b) for i, a in enumerate(found) for b in found[i + 1 :])  # 5 different classes
    val = vinyals.sample("val", 2, split_generator(3, "val"))
    assert val.query_x.shape == (2, 20, 1, 28, 28)  # eval_queries=4


def test_sample_equals_loop_over_the_cache(vinyals):
    g = split_generator(7, "train", 2)
    picks, drawers = vinyals.draw("train", 4, g)
    ep = vinyals.sample("train", 4, split_generator(7, "train", 2))
    assert all(len(set(row.tolist())) == 5 for row in picks)
    assert all(len(set(d.tolist())) == 16 for d in drawers.flatten(0, 1))
    table = vinyals.classes["train"]
    for t in range(4):
        for w in range(5):
            char, k = table[picks[t, w]].tolist()
            imgs = torch.rot90(vinyals.images[char, drawers[t, w]], k, dims=(-2, -1)).float() / 255
            assert torch.equal(ep.support_x[t, w, 0], imgs[0])
            assert torch.equal(ep.query_x[t, 15 * w : 15 * (w + 1), 0], imgs[1:])


def test_episodes_are_deterministic_by_seed(vinyals, cache_dir):
    a = vinyals.sample("train", 3, split_generator(0, "train", 9))
    b = vinyals.sample("train", 3, split_generator(0, "train", 9))
    c = vinyals.sample("train", 3, split_generator(1, "train", 9))
    assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_x, b.query_x)
    assert not torch.equal(a.support_x, c.support_x)
    # Fixed validation episodes: the same from two separately built datamodules, chunked as asked.
    make = lambda seed: OmniglotDataModule(str(OMNI), eval_queries=4, val_episodes=7, eval_batch_size=3,
                                           seed=seed, cache_dir=str(cache_dir)).fixed_episodes("val")
    v1, v2, other = make(0), make(0), make(1)
    assert [e.num_tasks for e in v1] == [3, 3, 1]
    assert all(torch.equal(x.query_x, y.query_x) for x, y in zip(v1, v2))
    assert not torch.equal(v1[0].query_x, other[0].query_x)


def test_affine_distort_against_pixel_references():
    """``affine_distort`` moves pixels as the map says: identity, a one-pixel shift, a quarter turn."""
    x = torch.rand(3, 1, 1, 8, 8)
    eye = torch.tensor([[1.0, 0, 0], [0, 1, 0]]).repeat(3, 1, 1)
    torch.testing.assert_close(omi.affine_distort(x, eye), x, rtol=0, atol=1e-6)
    shift = eye.clone()
    shift[:, 0, 2] = 2 / 8  # sample one pixel to the right: the image moves left, zeros come in
    expected = torch.cat([x[..., 1:], torch.zeros_like(x[..., :1])], -1)
    torch.testing.assert_close(omi.affine_distort(x, shift), expected, rtol=0, atol=1e-6)
    turn = torch.tensor([[0.0, -1, 0], [1, 0, 0]]).repeat(3, 1, 1)
    torch.testing.assert_close(omi.affine_distort(x, turn), torch.rot90(x, 1, dims=(-2, -1)), rtol=0, atol=1e-6)
    theta = omi.random_affine(1000, torch.Generator().manual_seed(0))
    linear = theta[:, :, :2]
    assert 0.55 < float(torch.linalg.det(linear).min()) and float(torch.linalg.det(linear).max()) < 1.6
    assert float(theta[:, :, 2].abs().max()) <= 2 * omi.AUGMENT_RANGES["shift"] + 1e-6


def test_augment_distorts_meta_training_images_only(vinyals, cache_dir):
    """``augment=true``: the same classes and labels, distorted training images (seeded), untouched
    validation episodes; the pre-training batches likewise."""
    aug = OmniglotDataModule(str(OMNI), ways=5, shots=1, queries=15, eval_queries=4, cache_dir=str(cache_dir),
                             augment=True)
    gen = lambda: split_generator(0, "train", 3)
    plain, a, b = vinyals.sample("train", 2, gen()), aug.sample("train", 2, gen()), aug.sample("train", 2, gen())
    assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_x, b.query_x)  # seeded
    assert torch.equal(a.support_y, plain.support_y) and torch.equal(a.query_y, plain.query_y)
    assert not torch.equal(a.query_x, plain.query_x) and a.query_x.shape == plain.query_x.shape
    ratio = a.query_x.sum((-1, -2, -3)) / plain.query_x.sum((-1, -2, -3))  # ink kept, up to the scaling
    assert 0.4 < float(ratio.min()) and float(ratio.max()) < 1.8
    assert all(torch.equal(e.query_x, f.query_x) for e, f in zip(aug.fixed_episodes("val"), vinyals.fixed_episodes("val")))
    xa, ya = aug.labelled_batch("train", 8, gen())
    xp, yp = vinyals.labelled_batch("train", 8, gen())
    assert torch.equal(ya, yp) and not torch.equal(xa, xp)
    assert torch.equal(aug.labelled_batch("val", 8, gen())[0], vinyals.labelled_batch("val", 8, gen())[0])


def test_labelled_batch(vinyals):
    x, y = vinyals.labelled_batch("val", 50, split_generator(0, "train", 1))
    assert x.shape == (50, 1, 28, 28) and y.shape == (50,) and y.dtype == torch.int64
    assert 0 <= y.min() and y.max() < vinyals.num_classes("val") == 688
    lookup = class_lookup(vinyals, "val")
    assert all(y[i].item() in lookup[to_bytes(x[i])] for i in range(50))
    x2, y2 = vinyals.labelled_batch("val", 50, split_generator(0, "train", 1))
    assert torch.equal(x, x2) and torch.equal(y, y2)
    with pytest.raises(NotImplementedError, match="labelled_batch"):
        SinusoidDataModule().labelled_batch("train", 4, split_generator(0, "train"))


# -------------------------------------------------------------------------------------- errors
def test_missing_data_and_split_files_say_what_to_do(tmp_path, cache_dir):
    with pytest.raises(FileNotFoundError, match=r"does not exist.*dataset.download=true.*raw.githubusercontent.com/"
                       r"brendenlake/omniglot/master/python/images_background.zip"):
        OmniglotDataModule(str(tmp_path / "nowhere"), cache_dir=str(cache_dir))
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "images_background.zip").symlink_to(OMNI / "images_background.zip")
    with pytest.raises(FileNotFoundError, match="has no images_evaluation.zip.*dataset.download=true"):
        OmniglotDataModule(str(partial), cache_dir=str(cache_dir))
    (partial / "images_evaluation.zip").symlink_to(OMNI / "images_evaluation.zip")
    with pytest.raises(FileNotFoundError, match=r"splits/vinyals/train.txt.*dataset.split=lake"):
        OmniglotDataModule(str(partial), cache_dir=str(cache_dir))
    OmniglotDataModule(str(partial), split="lake", cache_dir=str(cache_dir))  # lake needs no list


def test_corrupt_zip_or_png_is_named(tmp_path):
    cache = tmp_path / "cache"
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "images_background.zip").write_bytes((OMNI / "images_background.zip").read_bytes()[:100_000])
    (bad / "images_evaluation.zip").symlink_to(OMNI / "images_evaluation.zip")
    with pytest.raises(ValueError, match=r"bad/images_background.zip: not a readable zip.*dataset.download=true"):
        OmniglotDataModule(str(bad), split="lake", cache_dir=str(cache))
    member = "images_background/Alphabet_of_the_Magi/character02/0710_05.png"
    small_zip(bad / "images_background.zip", "images_background", corrupt=member)
    with pytest.raises(ValueError, match=f"images_background.zip: member {member} cannot be read as a PNG"):
        OmniglotDataModule(str(bad), split="lake", cache_dir=str(cache))
    assert not cache.exists() or not any(cache.iterdir())  # nothing cached from a bad zip


@pytest.mark.parametrize("kwargs, match", [
    (dict(ways=700), r"dataset.ways=700 but the val split of dataset.split=vinyals has only 688 classes"),
    (dict(shots=5, queries=16), r"dataset.shots \+ dataset.queries = 5 \+ 16 > 20"),
    (dict(shots=1, queries=15, eval_queries=20), r"dataset.shots \+ dataset.eval_queries = 1 \+ 20 > 20"),
    (dict(shots=1, train_shots=10, queries=15), r"dataset.train_shots \+ dataset.queries = 10 \+ 15 > 20.*lower dataset.train_shots"),
    (dict(split="omniglot"), "dataset.split must be 'vinyals' or 'lake'"),
    (dict(split="lake", lake_val_alphabets=30), "lake_val_alphabets must be in 1..29"),
    (dict(ways=0), "dataset.ways must be > 0"),
])
def test_bad_arguments(cache_dir, kwargs, match):
    with pytest.raises(ValueError, match=match):
        OmniglotDataModule(str(OMNI), cache_dir=str(cache_dir), **kwargs)


def test_train_ways_and_within_alphabet_episodes(cache_dir):
    """``train_ways`` sizes meta-training episodes only; ``within_alphabet`` draws every episode's
    classes from one alphabet (checked by name), and both stay seeded."""
    dm = OmniglotDataModule(str(OMNI), ways=5, shots=1, queries=2, train_ways=20, within_alphabet=True,
                            cache_dir=str(cache_dir))
    ep = dm.sample("train", 8, split_generator(0, "train", 0))
    assert ep.support_x.shape == (8, 20, 1, 28, 28) and torch.equal(ep.support_y[0], torch.arange(20))
    assert dm.sample("val", 3, split_generator(0, "val")).support_x.shape[1] == 5
    names = dm.class_names("train")
    picks, _ = dm.draw("train", 50, split_generator(1, "train", 0))
    alphabets = [{names[c].split("/")[0] for c in row.tolist()} for row in picks]
    assert all(len(a) == 1 for a in alphabets) and len(set.union(*alphabets)) > 5  # one each, many overall
    assert len({c for row in picks.tolist() for c in row}) > 200
    assert torch.equal(picks, dm.draw("train", 50, split_generator(1, "train", 0))[0])
    # Without the option, episodes mix alphabets.
    mixed = OmniglotDataModule(str(OMNI), ways=5, shots=1, queries=2, train_ways=20, cache_dir=str(cache_dir))
    picks, _ = mixed.draw("train", 5, split_generator(1, "train", 0))
    assert all(len({names[c].split("/")[0] for c in row.tolist()}) > 1 for row in picks)


def test_within_alphabet_ways_larger_than_every_alphabet(cache_dir):
    with zipfile.ZipFile(OMNI / "images_background.zip") as z:  # characters per training alphabet, from the zip
        chars = {tuple(n.split("/")[1:3]) for n in z.namelist() if n.count("/") == 3 and n.endswith(".png")}
    alphabets = sorted({a for a, _ in chars})[:-5]  # lake_val_alphabets=5 holds out the last five
    largest = max(sum(a == b for b, _ in chars) for a in alphabets)
    with pytest.raises(ValueError, match=rf"dataset.train_ways=60 but the largest alphabet of the train split of "
                                         rf"dataset.split=lake has only {largest} classes; lower dataset.train_ways or "
                                         r"set dataset.within_alphabet=false"):
        OmniglotDataModule(str(OMNI), split="lake", train_ways=60, within_alphabet=True, cache_dir=str(cache_dir))


def test_lake_ways_larger_than_a_split(cache_dir):
    with pytest.raises(ValueError, match="dataset.ways=200 but the val split of dataset.split=lake has only 151"):
        OmniglotDataModule(str(OMNI), split="lake", ways=200, cache_dir=str(cache_dir))


def test_download_verifies_and_leaves_no_partial_file(tmp_path, monkeypatch, cache_dir):
    src = OMNI / "images_evaluation.zip"
    url = src.resolve().as_uri()  # urllib fetches file:// like https://
    dest = tmp_path / "dl"
    with pytest.raises(ValueError, match="has MD5 .* the official file has 6b91aef0f799c5bb55b94e3f2daec811"):
        om.download_zip("images_evaluation", dest, url=url)  # the shared zip is a rebuilt container
    assert list(dest.iterdir()) == []
    small = small_zip(tmp_path / "small.zip", "images_evaluation")
    with pytest.raises(ValueError, match="holds 40 PNGs, expected 13180"):
        om.download_zip("images_evaluation", dest, url=small.as_uri(), md5=hashlib.md5(small.read_bytes()).hexdigest())
    assert list(dest.iterdir()) == []
    with pytest.raises(ConnectionError, match="could not download .*missing.zip.*images_evaluation.zip by hand"):
        om.download_zip("images_evaluation", dest, url=(tmp_path / "missing.zip").as_uri())
    assert list(dest.iterdir()) == []
    # download=true through the datamodule, with the official URLs and MD5s pointed at the local copies.
    monkeypatch.setattr(om, "OFFICIAL_URL", OMNI.resolve().as_uri() + "/{name}.zip")
    monkeypatch.setattr(om, "OFFICIAL_MD5", {n: hashlib.md5((OMNI / f"{n}.zip").read_bytes()).hexdigest() for n in om.SETS})
    dm = OmniglotDataModule(str(dest), split="lake", download=True, cache_dir=str(cache_dir))
    assert sorted(p.name for p in dest.iterdir()) == ["images_background.zip", "images_evaluation.zip"]
    assert (dest / "images_evaluation.zip").read_bytes() == src.read_bytes()
    assert dm.num_classes("test") == 659


# ---------------------------------------------------------------------------------- Lake's runs
@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "omniglot_runs"
    runs_main(["build", "--data-dir", str(OMNI), "--out", str(out), "--seed", "0"])
    return out


def test_runs_builder_is_deterministic_and_within_alphabet(runs_dir, tmp_path):
    with zipfile.ZipFile(OMNI / "images_evaluation.zip") as z:
        source = {z.read(n): n for n in z.namelist() if n.endswith(".png")}  # bytes -> member
    for r in range(1, 21):
        run = runs_dir / f"run{r:02d}"
        lines = (run / "class_labels.txt").read_text().split("\n")[:-1]
        assert len(lines) == 20
        members = {}
        for line in lines:
            item, cls = line.split()
            a, b = source[(runs_dir / item).read_bytes()], source[(runs_dir / cls).read_bytes()]
            assert a.rsplit("/", 1)[0] == b.rsplit("/", 1)[0]  # same character
            assert a.rsplit("_", 1)[1] != b.rsplit("_", 1)[1]  # different drawers
            members[cls] = b
        assert len(members) == 20 and len({m.split("/")[1] for m in members.values()}) == 1  # one alphabet
    again = build_runs(OMNI, tmp_path / "again", seed=0)
    other = build_runs(OMNI, tmp_path / "other", seed=1)
    assert (again / "run07" / "class_labels.txt").read_text() == (runs_dir / "run07" / "class_labels.txt").read_text()
    assert (again / "run07" / "test" / "item03.png").read_bytes() == (runs_dir / "run07" / "test" / "item03.png").read_bytes()
    assert (other / "run07" / "test" / "item03.png").read_bytes() != (runs_dir / "run07" / "test" / "item03.png").read_bytes()
    with pytest.raises(FileExistsError, match="already exists"):
        build_runs(OMNI, runs_dir)


def test_runs_datamodule_matches_the_images_and_labels(runs_dir, vinyals, tmp_path):
    dm = OmniglotRunsDataModule(str(runs_dir), image_size=28, eval_batch_size=8)
    test = dm.fixed_episodes("test")
    assert [e.num_tasks for e in test] == [8, 8, 4]
    assert all(torch.equal(a.query_x, b.query_x) for a, b in zip(test, dm.fixed_episodes("val")))
    ep = dm.runs
    assert ep.support_x.shape == (20, 20, 1, 28, 28) and ep.query_x.shape == (20, 20, 1, 28, 28)
    # Same preprocessing as the dataset: every run image equals its cached Omniglot image, and
    # every query's label is the class image of the same character.
    lookup = {img.numpy().tobytes(): (c, d) for c, row in enumerate(vinyals.images) for d, img in enumerate(row)}
    for r in range(20):
        chars = [lookup[to_bytes(ep.support_x[r, k])][0] for k in range(20)]
        assert torch.equal(ep.support_y[r], torch.arange(20))
        for m in range(20):
            assert lookup[to_bytes(ep.query_x[r, m])][0] == chars[ep.query_y[r, m]]
        line = (runs_dir / f"run{r + 1:02d}" / "class_labels.txt").read_text().split("\n")[4]
        assert int(line[-6:-4]) - 1 == ep.query_y[r, 4]
    # Polarity: a copy with white ink on black gives the same tensors.
    inverted = tmp_path / "inverted"
    shutil.copytree(runs_dir, inverted)
    for png in inverted.glob("run*/*/*.png"):
        ImageOps.invert(Image.open(png).convert("L")).save(png)
    inv = OmniglotRunsDataModule(str(inverted)).runs
    assert torch.equal(inv.support_x, ep.support_x) and torch.equal(inv.query_x, ep.query_x)


def test_runs_are_evaluation_only_and_need_the_directory(runs_dir, tmp_path):
    dm = OmniglotRunsDataModule(str(runs_dir))
    for call in (dm.train_dataloader, lambda: dm.fixed_episodes("train"), lambda: dm.sample("train", 1, split_generator(0, "train"))):
        with pytest.raises(ValueError, match="evaluation only.*dataset=omniglot"):
            call()
    with pytest.raises(FileNotFoundError, match=r"lacks run01, run02, run03 \.\.\..*omniglot\.runs build"):
        OmniglotRunsDataModule(str(tmp_path))
    with pytest.raises(ValueError, match="20-way 1-shot"):
        OmniglotRunsDataModule(str(runs_dir), ways=5)


# -------------------------------------------------------------------------- through train.py
def test_train_maml_conv4_on_lake_then_eval_on_runs(run_config, cache_dir, runs_dir):
    from metaft.stages import main

    # A narrow Conv4 keeps this a test of the plumbing (shapes, labels, metrics, checkpoints), not of learning.
    # Lake's split: the runs come from its test alphabets (a Vinyals checkpoint is refused there).
    common = [f"paths.data_dir={DATA}", f"paths.cache_dir={cache_dir}", "dataset=omniglot", "dataset.split=lake", "model=conv4",
              "model.filters=8", "algorithm=maml", "algorithm.inner_lr=0.4", "dataset.meta_batch_size=2",
              "dataset.queries=2", "dataset.eval_queries=3", "dataset.val_episodes=4", "dataset.test_episodes=10",
              "dataset.eval_batch_size=5", "trainer.max_steps=2", "trainer.val_check_interval=2",
              "checkpoint.every_n_train_steps=2", "seed=0"]
    cfg = run_config("train", [*common, "dataset.ways=20"], "train")
    main(cfg)
    res = json.loads((Path(cfg.hydra.runtime.output_dir) / "results.json").read_text())
    assert res["test/episodes"] == 10 and res["test/acc"] == res["test/acc_step1"]
    # 10 tasks x 60 queries: accuracies are multiples of 100/600 percent.
    assert 0 <= res["test/acc"] <= 100 and abs(res["test/acc"] * 6 - round(res["test/acc"] * 6)) < 1e-3
    ev = run_config("eval", [f"ckpt_path={res['ckpt']}", "dataset=omniglot_runs", f"dataset.data_dir={runs_dir}"], "eval")
    main(ev)
    runs = json.loads((Path(ev.hydra.runtime.output_dir) / "results.json").read_text())
    # 20 runs x 20 trials: multiples of 1/4 percent.
    assert runs["test/episodes"] == 20 and abs(runs["test/acc"] * 4 - round(runs["test/acc"] * 4)) < 1e-3
    # Compared with people scoring one image at a time: inductive, whatever the training used.
    assert res["batch_norm"] == "transductive (query set)" and runs["batch_norm"] == "inductive (support set)"
    # The runs are a test: there are no validation episodes to choose settings on.
    val = run_config("eval", [f"ckpt_path={res['ckpt']}", "dataset=omniglot_runs", f"dataset.data_dir={runs_dir}",
                              "eval_split=val"], "eval")
    with pytest.raises(ValueError, match="eval_split=val: OmniglotRunsDataModule has no validation episodes"):
        main(val)
    # Validation on fewer held-out alphabets than the training's scores a subset of its validation classes;
    # on more, it would score alphabets the checkpoint was trained on: refused before any data is read.
    fewer = run_config("eval", [f"ckpt_path={res['ckpt']}", "eval_split=val", "++dataset.lake_val_alphabets=1"], "eval")
    main(fewer)
    assert json.loads((Path(fewer.hydra.runtime.output_dir) / "results.json").read_text())["val/episodes"] == 4
    more = run_config("eval", [f"ckpt_path={res['ckpt']}", "eval_split=val", "++dataset.lake_val_alphabets=6"], "eval")
    with pytest.raises(ValueError, match=r"scores \d+ of its \d+ val classes .* in its train classes"):
        main(more)


@pytest.mark.parametrize("experiment, ways, lr, eval_lr, steps, batch", [
    ("omniglot_cpu", 5, 1.6, 0.4, 1, 1),  # 20-way training episodes, the step scaled by 20/5
    ("omniglot_paper", 5, 0.4, None, 1, 32), ("omniglot_paper_20way", 20, 0.1, None, 5, 16)])
def test_experiment_configs_compose(run_config, experiment, ways, lr, eval_lr, steps, batch):
    cfg = run_config("train", [f"experiment={experiment}"])
    assert cfg.dataset._target_ == "metaft.data.OmniglotDataModule" and cfg.model._target_ == "metaft.models.Conv4"
    assert (cfg.dataset.ways, cfg.model.out_features, cfg.algorithm.inner_lr) == (ways, ways, lr)
    assert cfg.algorithm.eval_inner_lr == eval_lr
    assert (cfg.algorithm.inner_steps, cfg.dataset.meta_batch_size, cfg.algorithm.vectorize) == (steps, batch, "auto")
    assert cfg.model.image_size == cfg.dataset.image_size == 28


@pytest.mark.parametrize("experiment, batch, steps, lr, eval_batch, iterations", [
    ("omniglot_paper", 10, 5, 1e-3, 5, 100_000), ("omniglot_paper_20way", 20, 10, 5e-4, 10, 200_000)])
def test_reptile_paper_recipes_are_the_papers_settings(run_config, experiment, batch, steps, lr, eval_batch, iterations):
    """Nichol et al. (2018)'s Omniglot settings: Adam (beta1 = 0) on support mini-batches with its
    moments carried over, 10 training shots, 50 test iterations, meta-batch 5, outer step 1.0 annealed."""
    cfg = run_config("train", [f"experiment={experiment}", "algorithm=reptile"])
    a = cfg.algorithm
    assert (a.inner_optimizer, list(a.inner_betas), a.inner_state, a.first_order) == ("adam", [0.0, 0.999], "carry", True)
    assert (a.inner_batch, a.inner_steps, a.inner_lr, a.eval_inner_batch, a.eval_inner_steps) == (batch, steps, lr, eval_batch, 50)
    assert (cfg.dataset.shots, cfg.dataset.train_shots, cfg.dataset.meta_batch_size) == (1, 10, 5)
    assert (a.optimizer.lr, a.scheduler.end_factor, a.scheduler.total_iters, cfg.trainer.max_steps) == (1.0, 0.0, iterations, iterations)


ALGORITHMS = sorted(p.stem for p in (ROOT / "conf" / "algorithm").glob("*.yaml"))
EXPERIMENTS = sorted(p.name for p in (ROOT / "conf" / "recipe").iterdir() if p.is_dir() and not p.name.startswith("_"))


def test_an_experiment_without_the_algorithms_recipe_is_refused(tmp_path, monkeypatch):
    """A recipe that is missing is an error naming the file (it used to fall back silently)."""
    from metaft.stages import meta
    from tests.conftest import compose

    cfg = compose("train", ["experiment=omniglot_cpu", "algorithm=maml"], tmp_path / "run")
    meta.check_recipe()  # present: nothing to say
    # The same choice against a project whose omniglot_cpu recipes lack maml's.
    recipes = tmp_path / "project" / "conf" / "recipe" / "omniglot_cpu"
    shutil.copytree(ROOT / "conf" / "recipe" / "omniglot_cpu", recipes)
    (recipes / "maml.yaml").unlink()
    monkeypatch.setattr(meta, "conf_dir", lambda: tmp_path / "project" / "conf")
    with pytest.raises(ValueError, match="experiment=omniglot_cpu has no recipe for algorithm=maml: write "
                                         "conf/recipe/omniglot_cpu/maml.yaml"):
        meta.train(cfg)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_algorithm_gets_its_recipe(run_config, experiment):
    """``experiment=E algorithm=A`` picks conf/recipe/E/A.yaml: every learner builds (feature-head
    learners with no inner loop, the others with theirs) and episode sizes follow the recipe."""
    import hydra

    from metaft.stages.meta import check_recipe

    models = {}
    for algorithm in ALGORITHMS:
        cfg = run_config("train", [f"experiment={experiment}", f"algorithm={algorithm}"], f"{experiment}_{algorithm}")
        check_recipe()  # the recipe is an optional default: composing alone would not miss it
        models[algorithm] = OmegaConf.to_container(cfg.model, resolve=True)
        learner = hydra.utils.instantiate(cfg.algorithm, net=hydra.utils.instantiate(cfg.model), task="classification")
        learner.configure_optimizers()  # the recipe's optimizer takes its keys (no SGD key left on Adam)
        if not learner.has_inner_loop:
            assert learner.inner_steps == 0, algorithm
        else:
            assert learner.inner_steps >= 1, algorithm
            # More training ways than test ways only with a head sized per episode (a zero head).
            assert cfg.dataset.get("train_ways") in (None, cfg.dataset.ways) or learner.zero_head, algorithm
    # Meta-Baseline starts from a stage-1 run of the same experiment (algorithm.init_ckpt): same body.
    assert models["metabaseline"] == models["baselinepp"] == models["pretrain"], experiment
    cpu = run_config("train", ["experiment=omniglot_cpu", "algorithm=protonet"], "cpu_protonet").dataset
    paper = run_config("train", ["experiment=omniglot_paper", "algorithm=protonet"], "paper_protonet").dataset
    assert (cpu.train_ways, cpu.meta_batch_size, paper.train_ways) == (20, 1, 60)


def test_train_ways_needs_a_learner_that_builds_its_head(run_config, cache_dir):
    from metaft.stages.meta import build

    cfg = run_config("train", ["dataset=omniglot", "model=conv4", "algorithm=maml", "dataset.train_ways=20",
                               f"paths.cache_dir={cache_dir}"])
    with pytest.raises(ValueError, match="dataset.train_ways=20 differs from dataset.ways=5, but algorithm MAML"):
        build(cfg)
    # A zero head is sized by each episode, so MAML may then train on more ways; Meta-SGD may not:
    # its learned step sizes for the head have the head's size.
    common = ["dataset=omniglot", "model=conv4", "dataset.train_ways=20", "algorithm.zero_head=true",
              f"paths.cache_dir={cache_dir}"]
    assert build(run_config("train", ["algorithm=maml", *common], "zero"))[0].train_ways == 20
    with pytest.raises(ValueError, match="but algorithm MetaSGD"):
        build(run_config("train", ["algorithm=metasgd", *common], "zero_metasgd"))
    # Likewise testing a learned head on more ways than it has outputs (a checkpoint's stored
    # model keeps its size when dataset.ways is raised at evaluation).
    with pytest.raises(ValueError, match="dataset.ways=20 but the network's head has 5 outputs.*use dataset.ways=5"):
        build(run_config("train", ["dataset=omniglot", "model=conv4", "algorithm=maml", "dataset.ways=20",
                                   "model.out_features=5", f"paths.cache_dir={cache_dir}"], "head5"))


def test_evaluation_episodes_do_not_depend_on_batch_size_or_count(cache_dir):
    """Episode i of an Omniglot split is the same whatever ``eval_batch_size`` and the episode
    count, and equals one task drawn from its own generator (the batched gather is a shortcut)."""
    from metaft.data.episodic import episode_generator

    make = lambda **kw: OmniglotDataModule(str(OMNI), ways=5, shots=1, queries=2, eval_queries=3, within_alphabet=True,
                                           cache_dir=str(cache_dir), **kw)
    a, b = make(test_episodes=12, eval_batch_size=12), make(test_episodes=7, eval_batch_size=3)
    ea, eb = (Episode.cat(dm.fixed_episodes("test")) for dm in (a, b))
    assert torch.equal(ea.support_x[:7], eb.support_x) and torch.equal(ea.query_x[:7], eb.query_x)
    for i in (0, 6, 11):
        one = a.sample("test", 1, episode_generator(a.seed, "test", i))
        assert torch.equal(ea.support_x[i], one.support_x[0]) and torch.equal(ea.query_x[i], one.query_x[0])
    assert a.fingerprint("test") == make(test_episodes=12, eval_batch_size=5).fingerprint("test")
