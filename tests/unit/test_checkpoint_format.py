"""The checkpoint format has one home (``metaft.checkpoint``): its keys, its version, reading and writing."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from metaft import checkpoint

SRC = Path(checkpoint.__file__).parent
KEYS = (checkpoint.FORMAT_KEY, checkpoint.CONFIG_KEY, checkpoint.HEAD_TRAINED_KEY, checkpoint.SKIPPED_STEPS_KEY,
        checkpoint.CLASSES_KEY)


def test_written_keys_read_back(tmp_path):
    data: dict = {"state_dict": {"w": torch.ones(2)}}
    checkpoint.write(data, {"seed": 3}, head_trained=False, skipped_steps=2, classes={"source": "x"})
    torch.save(data, tmp_path / "a.ckpt")
    back = checkpoint.load(tmp_path / "a.ckpt")
    assert back[checkpoint.FORMAT_KEY] == checkpoint.FORMAT_VERSION
    assert checkpoint.config(back) == {"seed": 3}
    assert checkpoint.head_trained(back) is False
    assert checkpoint.skipped_steps(back) == 2
    assert checkpoint.stored_classes(back) == {"source": "x"}


def test_unset_values_are_left_out():
    data: dict = {}
    checkpoint.write(data, None)
    assert set(data) == {checkpoint.FORMAT_KEY}
    assert checkpoint.config(data) == {} and checkpoint.head_trained(data) is None and checkpoint.skipped_steps(data) == 0


def test_checkpoint_without_a_version_reads_as_the_first(tmp_path):
    """Checkpoints written before the version key have version 1's layout."""
    torch.save({"state_dict": {}, checkpoint.CONFIG_KEY: {"seed": 1}}, tmp_path / "old.ckpt")
    if checkpoint.FORMAT_VERSION == 1:
        assert checkpoint.config(checkpoint.load(tmp_path / "old.ckpt")) == {"seed": 1}
    else:
        with pytest.raises(checkpoint.CheckpointFormatError):
            checkpoint.load(tmp_path / "old.ckpt")


@pytest.mark.parametrize("step, advice", [(1, "newer metaft"), (-1, "train the run again")])
def test_another_version_is_refused_with_what_to_do(tmp_path, step, advice):
    data: dict = {"state_dict": {}}
    checkpoint.write(data, {"seed": 0})
    data[checkpoint.FORMAT_KEY] = checkpoint.FORMAT_VERSION + step
    torch.save(data, tmp_path / "other.ckpt")
    with pytest.raises(checkpoint.CheckpointFormatError, match=rf"version {checkpoint.FORMAT_VERSION + step}.*{advice}"):
        checkpoint.load(tmp_path / "other.ckpt", what="meta_ckpt")


def test_a_dict_without_the_config_is_not_a_metaft_checkpoint(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "x.ckpt")
    with pytest.raises(checkpoint.CheckpointFormatError, match="not a metaft checkpoint"):
        checkpoint.load(tmp_path / "x.ckpt")


def test_no_other_module_spells_the_keys():
    """Every reader and writer goes through ``metaft.checkpoint``: no other module names a key."""
    spelled = re.compile("|".join(re.escape(repr(k)[1:-1]) for k in KEYS))
    offenders = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
                 if p != Path(checkpoint.__file__) and spelled.search(p.read_text())]
    assert offenders == []
