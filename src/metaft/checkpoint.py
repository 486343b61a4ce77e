"""The keys metaft adds to a Lightning checkpoint dict, defined once (the checkpoint format's home)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# The resolved training and validation classes and their image source
# (``metaft.data.identity.Classes.stored()``); absent in checkpoints written before they were kept.
CLASSES_KEY = "metaft_classes"


def stored_classes(checkpoint: Mapping[str, Any]) -> dict[str, Any] | None:
    """The classes a checkpoint was trained and validated on, or None when it predates them."""
    return checkpoint.get(CLASSES_KEY)
