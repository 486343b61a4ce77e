"""``dataset.download=true`` with the Vinyals split: the class lists cannot be downloaded, so the
run stops before fetching any zip and says which files to put where. No data or network needed."""
from __future__ import annotations

import pytest

from metaft.data import OmniglotDataModule
from metaft.data.omniglot import classes, store


def test_download_with_vinyals_split_names_the_lists_before_fetching(tmp_path, monkeypatch):
    fetched = []
    monkeypatch.setattr(store, "download_zip", lambda name, data_dir, *a, **k: fetched.append(name))
    monkeypatch.setattr(classes, "zip_paths", lambda d, download: pytest.fail("zips fetched before the lists"))
    with pytest.raises(FileNotFoundError) as e:
        OmniglotDataModule(str(tmp_path / "omniglot"), download=True, cache_dir=str(tmp_path / "cache"))
    msg = str(e.value)
    for name in ("train.txt", "val.txt", "test.txt"):
        assert str(tmp_path / "omniglot" / "splits" / "vinyals" / name) in msg
    assert "jakesnell/prototypical-networks" in msg and "nothing was downloaded" in msg and "dataset.split=lake" in msg
    assert not fetched
