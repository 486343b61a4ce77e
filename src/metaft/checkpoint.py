"""The metaft checkpoint format, defined once: the keys metaft adds to a Lightning checkpoint dict,
the format's version, writing them and reading them back. Every module that reads or writes one of
these keys goes through this module.

A checkpoint is Lightning's dict (``state_dict``, ``global_step``, optimizer states, ...) plus:

- ``metaft_format``: the version of this layout (``FORMAT_VERSION``). Checkpoints written before
  the key existed have the layout of version 1 and are read as such.
- ``metaft_config``: the composed run config (a plain dict), from which the run can be rebuilt.
- ``metaft_head_trained``: whether the learner's training left ``net.head`` meaningful (stage-1
  checkpoints only; fine-tuning keeps such a head).
- ``metaft_skipped_steps``: meta-steps dropped by ``algorithm.nonfinite=skip`` (stage 1).
- ``metaft_classes``: the classes trained and validated on (``data.identity.Classes.stored()``),
  so no later use scores the checkpoint on classes it has seen.
"""
from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

import torch

FORMAT_KEY = "metaft_format"
# Raise it when a key's meaning or layout changes, and say here what changed.
FORMAT_VERSION = 1
CONFIG_KEY = "metaft_config"
HEAD_TRAINED_KEY = "metaft_head_trained"
SKIPPED_STEPS_KEY = "metaft_skipped_steps"
CLASSES_KEY = "metaft_classes"


class CheckpointFormatError(ValueError):
    """A checkpoint this version of metaft cannot read: not a metaft checkpoint, or another
    version of the format."""


def write(checkpoint: MutableMapping[str, Any], config: Mapping[str, Any] | None, *,
          head_trained: bool | None = None, skipped_steps: int | None = None,
          classes: Mapping[str, Any] | None = None) -> None:
    """Add metaft's keys to the Lightning checkpoint dict ``checkpoint`` (in place); ``None``
    values are left out (a learner built outside a run has no config to store)."""
    checkpoint[FORMAT_KEY] = FORMAT_VERSION
    for key, value in ((CONFIG_KEY, config), (HEAD_TRAINED_KEY, head_trained),
                       (SKIPPED_STEPS_KEY, skipped_steps), (CLASSES_KEY, classes)):
        if value is not None:
            checkpoint[key] = value


def check_version(checkpoint: Mapping[str, Any], where: str = "the checkpoint") -> None:
    """Raise ``CheckpointFormatError`` for a checkpoint of another format version."""
    version = checkpoint.get(FORMAT_KEY, 1)  # before the key was written: version 1's layout
    if version != FORMAT_VERSION:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        raise CheckpointFormatError(
            f"{where} is a metaft checkpoint of format version {version!r}, but this metaft reads version "
            f"{FORMAT_VERSION} ({FORMAT_KEY!r}). "
            + ("It was written by a newer metaft: use that version to read it." if newer else
               "Use the metaft version that wrote it, or train the run again with this one.")
        )


def load(path: str | Path, what: str = "ckpt_path") -> dict[str, Any]:
    """Read a metaft checkpoint without running pickled code; raise a clear error if it is missing,
    truncated, not a metaft checkpoint or of another format version. ``what`` names the setting
    that gave the path, for the messages."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}={path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated/corrupt files
        raise ValueError(
            f"{what}={path} could not be read as a checkpoint ({type(e).__name__}: {e}). The file is "
            "truncated or corrupt; use another checkpoint of the run (checkpoints/best.ckpt or last.ckpt)."
        ) from e
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or CONFIG_KEY not in ckpt:
        raise CheckpointFormatError(
            f"{what}={path} is not a metaft checkpoint (it lacks 'state_dict' or {CONFIG_KEY!r})")
    check_version(ckpt, f"{what}={path}")
    return ckpt


def config(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The run config stored in ``checkpoint`` (empty when none was stored)."""
    return checkpoint.get(CONFIG_KEY) or {}


def head_trained(checkpoint: Mapping[str, Any]) -> bool | None:
    """Whether the learner's training left ``net.head`` meaningful; None when the checkpoint
    does not say (written before the key, or not by a stage-1 learner)."""
    return checkpoint.get(HEAD_TRAINED_KEY)


def skipped_steps(checkpoint: Mapping[str, Any]) -> int:
    """Meta-steps the run dropped as non-finite (0 when none were, or none were recorded)."""
    return int(checkpoint.get(SKIPPED_STEPS_KEY, 0))


def stored_classes(checkpoint: Mapping[str, Any]) -> dict[str, Any] | None:
    """The classes a checkpoint was trained and validated on, or None when it predates them."""
    return checkpoint.get(CLASSES_KEY)
