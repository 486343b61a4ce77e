"""The mini-ImageNet preset (ResNet-12 on a GPU) and the own-images preset, end to end on
miniatures of their data (stage 1 included, at toy sizes on the CPU), and what they refuse before
anything runs."""
from __future__ import annotations

import csv
from pathlib import Path

import hydra
import pytest
from omegaconf import OmegaConf

from metaft.study import budgets, datasets, stage1
from metaft.study.driver import load_config, main
from tests.data import miniatures as mn

# Toy sizes: two stage-1 steps on a ResNet-12 of 4 channels at 32 px, a few problems.
TOY_STAGE1 = ("stage1.overrides=[hardware=cpu, test=false, progress=log, trainer.max_steps=2, trainer.val_check_interval=2, "
              "checkpoint.every_n_train_steps=2, dataset.val_episodes=2, dataset.queries=2, dataset.eval_queries=2, "
              "dataset.train_ways=5, dataset.meta_batch_size=1, logging.images=false, 'model.channels=[4,4,4,4]']")
TOY = [TOY_STAGE1, "stage1.seeds=[0,1]", "stage1.jobs=2", "dataset.image_size=32", "random_model.channels=[4,4,4,4]",
       "target.shots=[1,all]", "target.all_shots=2", "target.test_per_class=2", "target.problems=4",
       "target.finetune_problems=2", "target.chunk=2", "adapt.finetune.max_steps=2", "adapt.finetune.eval_every=1",
       "adapt.finetune.val_problems=2", "adapt.finetune.starts=[zero,tempered]",
       "adapt.finetune.optimizers={sgd: [0.01, 1.0], adam: [0.001]}", "adapt.inner_grid={lr_scales: [1], max_steps: 2}",
       "adapt.probe.C=[1.0]"]
SPLIT_SIZES = (6, 5, 5)  # classes of the train / val / test split: at least 5 for 5-way problems


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def check_report(out: Path, inits: set[str]) -> None:
    table = rows(out / "study.csv")
    assert {r["init"] for r in table} == inits
    assert {r["shots"] for r in table} == {"1", "all"} and {r["seed"] for r in table} == {"0", "1"}
    assert {r["adaptation"] for r in table if r["init"] == "maml"} == {"probe", "finetune", "inner"}
    text = (out / "study.md").read_text()
    assert "## The answer" in text and "maml" in text and "pretrain" in text


def saved(out: Path) -> dict:
    return OmegaConf.to_container(OmegaConf.load(out / "study_config.yaml"))


@pytest.mark.slow  # ~100 s: ten stage-1 runs
def test_the_mini_imagenet_preset_runs_end_to_end_on_a_miniature(tmp_path):
    data = tmp_path / "mini_imagenet"
    data.mkdir()
    classes = mn.split_classes("mini_imagenet", SPLIT_SIZES)
    mn.mini_pickle(data, classes, per_class=8)
    lists = "{" + ", ".join(f"{s}: [{', '.join(names)}]" for s, names in classes.items()) + "}"
    out = tmp_path / "study"
    assert main(["mini_imagenet", *TOY, f"dataset.data_dir={data}", f"dataset.class_lists={lists}",
                 f"dataset.cache_dir={tmp_path / 'cache'}", "--out", str(out)]) == 0
    check_report(out, {"random", "pretrain", "protonet", "metabaseline", "anil", "maml"})
    # Meta-Baseline's stage 1 started from pre-training's checkpoint of the same seed, on the same data.
    launched = (out / "stage1" / "metabaseline_seed1" / "launch.json").read_text()
    assert "pretrain_seed1" in launched and "dataset=mini_imagenet" in launched and str(data) in launched
    assert saved(out)["dataset"]["class_lists"] == classes


def test_the_own_images_preset_runs_end_to_end_on_a_folder(tmp_path):
    root = tmp_path / "my images"  # a space in the path: the stage-1 runs get it quoted
    names = {s: [f"{s}_{i}" for i in range(n)] for s, n in zip(mn.SPLITS, SPLIT_SIZES)}
    mn.image_folder(root, [c for s in mn.SPLITS for c in names[s]], per_class=8)
    for s in mn.SPLITS:
        (root / f"{s}.txt").write_text("\n".join(names[s]) + "\n")
    out = tmp_path / "study"
    inits = "inits={random: null, pretrain: pretrain, maml: maml}"  # the primary pair, for time
    assert main(["image_folder", *TOY, inits, f"dataset.data_dir={root}", f"dataset.cache_dir={tmp_path / 'cache'}",
                 "--out", str(out)]) == 0
    check_report(out, {"random", "pretrain", "maml"})
    dataset = saved(out)["dataset"]
    assert dataset["name"] == "image_folder" and dataset["class_lists"]["test"] == str(root / "test.txt")
    assert "dataset=image_folder" in (out / "stage1" / "maml_seed0" / "launch.json").read_text()


def test_a_missing_folder_root_is_refused_naming_the_setting_before_anything_runs(tmp_path, capsys):
    out = tmp_path / "study"
    assert main(["image_folder", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "the image_folder study needs dataset.data_dir" in err and "dataset.data_dir=PATH" in err
    assert not out.exists()
    # A root that is not a folder, and one without its class lists, are refused as early.
    assert main(["image_folder", f"dataset.data_dir={tmp_path / 'nowhere'}", "--out", str(out)]) == 2
    assert f"dataset.data_dir={tmp_path / 'nowhere'} is not a directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["image_folder", f"dataset.data_dir={tmp_path / 'empty'}", "--out", str(out)]) == 2
    assert f"dataset.class_lists.train={tmp_path / 'empty' / 'train.txt'} is not a file" in capsys.readouterr().err
    assert not out.exists()


def test_a_settings_value_reaches_stage_one_in_hydras_grammar():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    values = ["/a b/it's", 3, 0.5, True, None, ["x y", "z"], {"train": "t.txt", "val": ["a", "b"]}]
    parsed = OverridesParser.create().parse_overrides([f"k={datasets.hydra_value(v)}" for v in values])
    assert [p.value() for p in parsed] == values


def test_the_mini_imagenet_preset_trains_every_init_on_a_resnet12_on_the_gpu():
    """The stage-1 runs as the preset launches them (composed, not run): the papers' recipes, one
    network family, a GPU, 1,000 validation episodes, Meta-Baseline from pre-training."""
    cfg = datasets.resolve(load_config("mini_imagenet", ["dataset.data_dir=."]))
    assert cfg.dataset.name == "mini_imagenet" and cfg.stage1.overrides[0] == "dataset=mini_imagenet"
    assert dict(cfg.inits) == {"random": None, "pretrain": "pretrain", "protonet": "protonet",
                               "metabaseline": "metabaseline_warm", "anil": "anil", "maml": "maml"}
    assert (cfg.primary.meta, cfg.primary.pretrained) == ("maml", "pretrain")
    learners = {"pretrain": "Pretrain", "protonet": "ProtoNet", "metabaseline": "ProtoNet", "anil": "ANIL", "maml": "MAML"}
    for init, algorithm in cfg.inits.items():
        if algorithm is None:
            continue
        run = budgets.compose_train(budgets.train_overrides(cfg, algorithm))
        assert run.model._target_ == "metaft.models.ResNet12" and list(run.model.channels) == [64, 160, 320, 640]
        assert run.model.global_pool and run.model.image_size == cfg.random_model.image_size == 84
        assert run.trainer.accelerator == "gpu" and run.dataset.val_episodes == 1000 and run.dataset.name == "mini_imagenet"
        assert run.algorithm._target_.rsplit(".", 1)[1] == learners[init], init
        hydra.utils.instantiate(run.model)  # the recipe's settings fit the network
    assert stage1.needs(cfg, "metabaseline_warm") == ["pretrain"]


@pytest.mark.parametrize("name", ["mini_imagenet", "image_folder"])
def test_the_presets_leave_nothing_but_the_data_to_give(name):
    cfg = load_config(name, ["dataset.data_dir=."])
    datasets.check_given(cfg)  # nothing else left as ???
    assert cfg.name == name and cfg.dataset.config == name


def test_a_checkpoint_trained_on_the_folders_test_classes_is_refused_before_anything_runs(tmp_path, capsys):
    """The class identities of a dataset-config study: a checkpoint that saw the test classes."""
    import torch

    from metaft.models import ResNet12
    from tests.finetune.conftest import save_ckpt

    root = tmp_path / "images"
    names = {s: [f"{s}_{i}" for i in range(n)] for s, n in zip(mn.SPLITS, SPLIT_SIZES)}
    mn.image_folder(root, [c for s in mn.SPLITS for c in names[s]], per_class=2)
    for s in mn.SPLITS:
        (root / f"{s}.txt").write_text("\n".join(names[s]) + "\n")
    model = {"_target_": "metaft.models.ResNet12", "in_channels": 3, "image_size": 32, "channels": [4, 4, 4, 4],
             "out_features": 5}
    seen = {"_target_": "metaft.data.images.FewShotImages", "name": "image_folder",
            "class_lists": {"train": names["test"], "val": names["val"][:1]}}
    net = ResNet12(**{k: v for k, v in model.items() if k != "_target_"})
    torch.manual_seed(0)
    ckpt = save_ckpt(tmp_path / "seen.ckpt", net, model, dataset=seen)
    out = tmp_path / "study"
    assert main(["image_folder", f"dataset.data_dir={root}", "dataset.image_size=32", "stage1.seeds=[0]",
                 f"--ckpt=maml={ckpt}", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "test classes that the checkpoint init maml's checkpoint has seen" in err and "test_0" in err
    assert not out.exists()
