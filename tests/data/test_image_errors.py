"""Missing, wrong and truncated files, checksums, downloads, a damaged cache and bad settings:
each error names the file or setting and what was expected."""
from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest

from metaft.data.images import FewShotImages
from metaft.data.images.source import BadFileError
from tests.data import miniatures as mn
from tests.data.miniatures import MINI, RAW


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
    mn.image_folder(tmp_path / "imgs", ["a", "b"])
    only_test = FewShotImages("image_folder", str(tmp_path / "imgs"), class_lists={"test": ["a", "b"]}, ways=2,
                              shots=1, queries=2, cache_dir=str(tmp_path / "c"))
    assert only_test.num_classes("test") == 2  # a split that is not used needs no list
    with pytest.raises(ValueError, match=r"dataset.class_lists.train is not set, but the train split"):
        only_test.setup("fit")


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


def test_bad_settings(tmp_path):
    mn.mini_pickle(tmp_path, MINI)
    kw = {"class_lists": MINI, "cache_dir": str(tmp_path / "c")}
    with pytest.raises(ValueError, match=r"dataset.ways=4 but the val split of mini_imagenet has only 3 classes"):
        FewShotImages("mini_imagenet", str(tmp_path), ways=4, **kw).store("val")
    with pytest.raises(ValueError, match=r"dataset.shots \+ queries = 9 but class 'n\d+' of the train split of "
                       r"mini_imagenet has only 8 images"):
        FewShotImages("mini_imagenet", str(tmp_path), ways=2, shots=4, queries=5, **kw).store("train")
    with pytest.raises(ValueError, match=r"dataset.mean and dataset.std"):
        FewShotImages("mini_imagenet", str(tmp_path), mean=[0.5], std=[0.2, 0.2, 0.2], **kw)
    with pytest.raises(ValueError, match=r"dataset.channels must be 1"):
        FewShotImages("mini_imagenet", str(tmp_path), channels=2, **kw)
