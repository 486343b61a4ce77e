"""Small file helpers: atomic writes and checkpoint reading with clear errors."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a crash leaves either the old or the new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes 0600 files; results are meant to be shared like any other output.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def load_checkpoint(path: str | Path, what: str = "ckpt_path") -> dict[str, Any]:
    """Load a Lightning checkpoint without running pickled code; raise a clear error if it is
    missing, truncated or not a metaft checkpoint."""
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
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "metaft_config" not in ckpt:
        raise ValueError(f"{what}={path} is not a metaft checkpoint (it lacks 'state_dict' or 'metaft_config')")
    return ckpt
