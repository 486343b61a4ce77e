"""Shared fixtures: small learners and episodes, and composing the real Hydra config."""
from __future__ import annotations

import os
from functools import partial
from pathlib import Path

# Tests run tiny tensors, often several processes at once (subprocess runs, 2-rank DDP): one
# thread each avoids OpenMP threads stalling on a busy 2-core machine. Set before torch loads,
# so subprocesses inherit it too.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from metaft.data import SinusoidDataModule, split_generator

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item) -> None:
    """``@pytest.mark.needs_data(path, what)``: skip when ``path`` is absent, with the reason in the
    summary (``-rs``); when the environment variable ``CI`` is set, fail instead, so CI cannot pass
    without running the data checks (split disjointness, Lake's runs). Before any fixture, so a
    data fixture never turns the skip into an error."""
    mark = item.get_closest_marker("needs_data")
    if mark is None or Path(mark.args[0]).exists():
        return
    what = mark.args[1] if len(mark.args) > 1 else "data"
    msg = f"no {what} at {mark.args[0]} (paths.data_dir)"
    if os.environ.get("CI"):
        pytest.fail(f"{msg}; CI is set, so the tests that need it fail rather than skip: provide the data there",
                    pytrace=False)
    pytest.skip(msg)


@pytest.fixture
def sinusoid_episode():
    """A float64 meta-batch of 4 sinusoid tasks, 5-shot, 7 queries."""
    dm = SinusoidDataModule(shots=5, queries=7)
    return dm.sample("train", 4, split_generator(0, "train")).to(torch.float64)


def sgd(lr: float = 0.1):
    return partial(torch.optim.SGD, lr=lr)


def compose(config_name: str, overrides: list[str], out_dir: Path):
    """Compose the real config as `python train.py --config-name NAME OVERRIDES` would, with the
    run directory at ``out_dir``, and register it as the current Hydra config."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(out_dir)
        cfg.hydra.job.num = 0
    out_dir.mkdir(parents=True, exist_ok=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.fixture
def run_config(tmp_path):
    """``run_config(name, overrides, subdir)`` -> composed config writing under tmp_path/subdir."""
    made = []

    def make(config_name: str, overrides: list[str], subdir: str = "run"):
        cfg = compose(config_name, overrides, tmp_path / subdir)
        made.append(cfg)
        return cfg

    yield make
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()


def tiny_lake_protonet(data_dir: Path, cache_dir: Path, *extra: str) -> list[str]:
    """Overrides of a one-step ProtoNet run on Lake's split with a 4-filter Conv4: a real
    checkpoint of Lake's background alphabets in seconds."""
    return [f"paths.data_dir={data_dir}", f"paths.cache_dir={cache_dir}", "dataset=omniglot", "dataset.split=lake",
            *extra, "model=conv4", "model.filters=4", "algorithm=protonet", "dataset.meta_batch_size=1",
            "dataset.queries=1", "dataset.eval_queries=1", "dataset.val_episodes=1", "dataset.test_episodes=1",
            "dataset.eval_batch_size=1", "trainer.max_steps=1", "trainer.val_check_interval=1",
            "checkpoint.every_n_train_steps=1", "test=false", "progress=log"]
