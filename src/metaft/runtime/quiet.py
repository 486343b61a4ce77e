"""Quiet the libraries' noise: each Lightning line once, and no hints that do not apply.

Lightning's import gives its ``lightning`` logger a console handler of its own, so under Hydra every line came twice; its SLURM hint (``srun`` is on the PATH), the
``litlogger`` advertisement and a ``_pytree`` deprecation inside Lightning say nothing a metaft
user can act on.
"""
from __future__ import annotations

import logging
import warnings

NOISE = ("litlogger", "litmodels", "The `srun` command is available")


class DropNoise(logging.Filter):
    """Drops log records that carry one of ``NOISE``."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(n in message for n in NOISE)


def quiet_libraries() -> None:
    """Route Lightning's log lines through the root logger only (Hydra's console and file), and
    drop the hints above. Idempotent; call once logging is configured."""
    import lightning  # noqa: F401  (its import adds the console handler removed here)

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:  # Lightning's own console handler
                logger.removeHandler(handler)
        logger.propagate = True
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, DropNoise) for f in handler.filters):
            handler.addFilter(DropNoise())
    warnings.filterwarnings("ignore", message=r".*The `srun` command is available")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    warnings.filterwarnings("ignore", message=r".*_pytree.* is deprecated")
