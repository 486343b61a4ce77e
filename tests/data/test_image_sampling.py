"""Episode sampling by class index (uniform among unequal classes) and batch augmentation against
pixel references. Its speed against a meta-step is a benchmark: benchmarks/image_sampling.py."""
from __future__ import annotations


import numpy as np
import torch

from metaft.data import split_generator
from metaft.data.images import FewShotImages
from metaft.data.images.augment import augment, pad_crop
from tests.data import miniatures as mn
from tests.data.miniatures import MINI, RAW


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
