"""Running ``train.py`` as a user would: a subprocess, so exit codes and printed errors are real."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# A few meta-steps on a small sinusoid problem: seconds per run.
FAST = ["trainer.max_steps=4", "trainer.val_check_interval=2", "dataset.meta_batch_size=4",
        "dataset.val_episodes=10", "dataset.test_episodes=10", "progress=log"]


def cli_env() -> dict[str, str]:
    """This checkout's code first, also for jobs that the sweep starts (they inherit it)."""
    paths = [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def train_cli(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=cli_env(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def train():
    return train_cli
