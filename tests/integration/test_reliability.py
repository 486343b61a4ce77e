"""Resume after SIGKILL, atomic and validated checkpoints, numeric faults, determinism."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from metaft.core.errors import NonFiniteLossError
from metaft.data import SinusoidDataModule
from metaft.stages import main
from metaft.checkpoint import load as load_checkpoint
from tests.conftest import ROOT

RUN = ["algorithm=metasgd", "trainer.max_steps=800", "trainer.val_check_interval=200",
       "checkpoint.every_n_train_steps=50", "dataset.val_episodes=50", "dataset.test_episodes=100",
       "dataset.meta_batch_size=10", "progress=log", "seed=3"]


def train_py(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def ckpt_step(path: Path) -> int:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])
    except Exception:
        return -1


FINETUNE = ["--config-name", "finetune", "target=sinusoid", "trainer.max_steps=800", "trainer.val_check_interval=200",
            "checkpoint.every_n_train_steps=50", "early_stopping.patience=0", "progress=log", "seed=3"]


@pytest.mark.parametrize("stage", ["meta-training", "fine-tuning"])
def test_resume_after_sigkill_is_bitwise_identical(tmp_path, stage):
    full, killed = tmp_path / "full", tmp_path / "killed"
    args = RUN
    if stage == "fine-tuning":
        meta = tmp_path / "meta"
        finish(train_py(*RUN[:1], "trainer.max_steps=20", "trainer.val_check_interval=10", *RUN[3:],
                        f"hydra.run.dir={meta}"))
        args = [*FINETUNE, f"meta_ckpt={meta / 'checkpoints' / 'last.ckpt'}"]
    finish(train_py(*args, f"hydra.run.dir={full}"))

    proc = train_py(*args, f"hydra.run.dir={killed}")
    last = killed / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while ckpt_step(last) < 300 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed; raise max_steps"
    killed_at = ckpt_step(last)
    assert 300 <= killed_at < 800 and not (killed / "results.json").exists()

    # Resume by naming the run directory; Hydra's new directory only points at it.
    resume = ["--config-name", "finetune"] if stage == "fine-tuning" else []
    finish(train_py(*resume, f"ckpt_path={killed}", f"hydra.run.dir={tmp_path / 'resume_cmd'}"))
    assert (tmp_path / "resume_cmd" / "RESUMED_INTO.txt").read_text().strip() == str(killed)
    assert f"resuming {last} in {killed}" in (killed / "train.log").read_text()  # the run's log has both halves
    # ... and its results.json its own overrides (what the report groups it by), not the resume command's
    import json

    from omegaconf import OmegaConf

    first = [str(o) for o in OmegaConf.load(killed / ".hydra" / "overrides.yaml")]
    assert json.loads((killed / "results.json").read_text())["overrides"] == first

    a = torch.load(full / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    b = torch.load(last, map_location="cpu", weights_only=True)
    assert a["global_step"] == b["global_step"] == 800
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k in a["state_dict"]:  # bitwise, Meta-SGD's step sizes included
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    ra = json.loads((full / "results.json").read_text())
    rb = json.loads((killed / "results.json").read_text())
    for k in ra:
        if k.startswith(("test/", "val/")):
            assert ra[k] == rb[k], k
    # One TensorBoard run: the continuation appends event files to the same directory.
    events = lambda d: len(list((d / "tensorboard").glob("events.out.tfevents.*")))  # noqa: E731
    assert events(killed) == events(full) + 1


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_checkpoint_gives_a_clear_error(tmp_path, damage):
    src = tmp_path / "bad.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1000)}, "metaft_config": {}}, src)
    data = src.read_bytes()
    src.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not a checkpoint" * 10)
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_checkpoint(src)
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.ckpt")


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(run_config):
    cfg = run_config("train", ["algorithm.optimizer._target_=torch.optim.SGD", "algorithm.optimizer.lr=2",
                               "trainer.max_steps=200", "checkpoint.every_n_train_steps=1"])
    with pytest.raises(NonFiniteLossError, match=r"step \d+.*(step size|inner_lr)"):
        main(cfg)
    last = Path(cfg.hydra.runtime.output_dir) / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert 0 < ckpt["global_step"] < 200
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())
    assert not (Path(cfg.hydra.runtime.output_dir) / "results.json").exists()


def test_nan_steps_can_be_skipped_and_counted(run_config):
    cfg = run_config("train", ["algorithm.optimizer._target_=torch.optim.SGD", "algorithm.optimizer.lr=2",
                               "algorithm.nonfinite=skip", "trainer.max_steps=30", "trainer.val_check_interval=30",
                               "dataset.val_episodes=20", "dataset.test_episodes=20"])
    main(cfg)
    ckpt = torch.load(Path(cfg.hydra.runtime.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["metaft_skipped_steps"] > 0
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


FAST = ["trainer.max_steps=20", "trainer.val_check_interval=10", "dataset.val_episodes=20",
        "dataset.test_episodes=40", "dataset.meta_batch_size=5"]


def test_same_seed_same_metrics_and_paired_episodes(run_config):
    res = {}
    for name, extra in [("a", ["seed=0"]), ("b", ["seed=0"]), ("anil", ["seed=0", "algorithm=anil"]), ("c", ["seed=1"])]:
        cfg = run_config("train", [*FAST, *extra], name)
        res[name] = main(cfg) or json.loads((Path(cfg.hydra.runtime.output_dir) / "results.json").read_text())
    metrics = [k for k in res["a"] if k.startswith(("test/", "val/"))]
    assert metrics and all(res["a"][k] == res["b"][k] for k in metrics)
    # Test episodes are the same for every algorithm under one seed, and change with the seed.
    assert res["a"]["test_episodes_fingerprint"] == res["anil"]["test_episodes_fingerprint"]
    assert res["a"]["test_episodes_fingerprint"] != res["c"]["test_episodes_fingerprint"]


def test_training_episodes_depend_on_seed_and_step_only():
    dm0, dm0b, dm1 = (SinusoidDataModule(seed=s) for s in (0, 0, 1))
    it0, it0b, it1 = (iter(dm.train_dataloader()) for dm in (dm0, dm0b, dm1))
    a, b, c = next(it0), next(it0b), next(it1)
    assert torch.equal(a.support_x, b.support_x) and not torch.equal(a.support_x, c.support_x)
    assert not torch.equal(a.support_x, next(it0).support_x)  # fresh episodes every step
