"""Loggers and callbacks are config groups (conf/logger/, conf/callbacks/) that the runtime builds:
each can be chosen, combined or switched off from the command line, in both stages."""
from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest

from metaft.stages import main
from tests.workflow.conftest import ROOT

FAST = ["trainer.max_steps=6", "trainer.val_check_interval=3", "checkpoint.every_n_train_steps=2",
        "dataset.val_episodes=10", "dataset.test_episodes=10", "dataset.meta_batch_size=4", "progress=log"]


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_logger_csv_writes_the_validation_scalars_and_no_tensorboard(run_config):
    cfg = run_config("train", [*FAST, "logger=csv"], "train")
    main(cfg)
    out = Path(cfg.hydra.runtime.output_dir)
    table = rows(out / "csv" / "metrics.csv")
    validations = [r for r in table if r.get("val/mse")]
    assert [int(r["step"]) for r in validations] == [2, 5]  # Lightning's steps: after steps 3 and 6
    assert all(float(r["val/mse"]) > 0 for r in validations)
    assert any(r.get("test/mse") for r in table)
    assert not (out / "tensorboard").exists()
    assert (out / "checkpoints" / "best.ckpt").is_file()  # the callbacks are the default's


def test_loggers_combine_and_the_eval_stage_takes_its_own(run_config):
    cfg = run_config("train", [*FAST, "logger=[tensorboard,csv]"], "train")
    main(cfg)
    out = Path(cfg.hydra.runtime.output_dir)
    assert (out / "csv" / "metrics.csv").is_file() and any((out / "tensorboard").iterdir())
    ev = run_config("eval", [f"ckpt_path={out}", "dataset.test_episodes=10", "logger=csv"], "eval")
    main(ev)
    table = rows(Path(ev.hydra.runtime.output_dir) / "csv" / "metrics.csv")
    assert any(r.get("test/mse") for r in table)
    assert not (Path(ev.hydra.runtime.output_dir) / "tensorboard").exists()
    assert not (Path(ev.hydra.runtime.output_dir) / "checkpoints").exists()  # eval trains nothing


def test_callbacks_none_leaves_no_checkpoints_and_no_logger_none_no_log_folders(run_config):
    cfg = run_config("train", [*FAST, "callbacks=none", "logger=none"], "train")
    main(cfg)
    out = Path(cfg.hydra.runtime.output_dir)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == []  # no checkpoints, tensorboard or csv
    assert "test/mse" in json.loads((out / "results.json").read_text())


def test_one_callback_switched_off_by_name(run_config):
    cfg = run_config("train", [*FAST, "callbacks.last_checkpoint=null"], "train")
    main(cfg)
    ckpts = Path(cfg.hydra.runtime.output_dir) / "checkpoints"
    assert [p.name for p in ckpts.iterdir()] == ["best.ckpt"]


def test_fine_tuning_early_stops_through_its_callbacks_config(run_config, tmp_path):
    source = run_config("train", FAST, "train")
    main(source)
    meta = Path(source.hydra.runtime.output_dir)
    common = [f"meta_ckpt={meta}", "trainer.max_steps=40", "trainer.val_check_interval=2", "finetuner.optimizer.lr=0",
              "early_stopping.patience=1", "progress=log"]
    # lr=0: validation never improves, so the stopper stops after its patience.
    stopped = run_config("finetune", common, "ft1")
    main(stopped)
    results = json.loads((Path(stopped.hydra.runtime.output_dir) / "results.json").read_text())
    assert results["early_stopped"] and results["steps"] < 40
    kept = run_config("finetune", [*common, "callbacks.early_stopping=null", "logger=csv"], "ft2")
    main(kept)
    results = json.loads((Path(kept.hydra.runtime.output_dir) / "results.json").read_text())
    assert not results["early_stopped"] and results["steps"] == 40
    assert any(r.get("val/mse") for r in rows(Path(kept.hydra.runtime.output_dir) / "csv" / "metrics.csv"))


@pytest.mark.parametrize("logger, package", [("wandb", "wandb"), ("mlflow", "mlflow")])
def test_an_optional_logger_without_its_package_names_the_package(run_config, logger, package):
    from metaft.runtime.trainer import make_loggers

    if importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed here")
    cfg = run_config("train", [f"logger={logger}"], "train")
    with pytest.raises(ValueError, match=f"logger={logger} needs the Python package {package}.*pip install {package}"):
        make_loggers(cfg, Path(cfg.hydra.runtime.output_dir))


def test_every_logger_and_callbacks_file_is_one_self_contained_yaml():
    """A logger is one file: a key naming it and its class (nothing registered in code)."""
    from omegaconf import OmegaConf

    for f in sorted((ROOT / "conf" / "logger").glob("*.yaml")):
        node = OmegaConf.load(f)
        assert f.stem == "none" or list(node) == [f.stem], f
        for entry in node.values():
            assert "_target_" in entry, f


def test_logger_and_callbacks_choices_are_checked_before_anything_runs():
    from metaft.runtime.validate import ConfigError, check_overrides

    check_overrides(ROOT / "conf", "train", ["logger=[tensorboard,csv]", "callbacks.progress=null"])
    with pytest.raises(ConfigError, match="logger=csvv: there is no logger csvv.*did you mean logger=csv"):
        check_overrides(ROOT / "conf", "train", ["logger=[tensorboard,csvv]"])
    with pytest.raises(ConfigError, match="did you mean callbacks.progress"):
        check_overrides(ROOT / "conf", "train", ["callbacks.progres=null"])
    if importlib.util.find_spec("wandb") is None:
        with pytest.raises(ConfigError, match="logger=wandb needs the Python package wandb.*pip install wandb"):
            check_overrides(ROOT / "conf", "train", ["logger=wandb"])
