"""Stage 1, cross-domain evaluation and stage 2 on image benchmarks through the real Hydra
configs and entry point, the mini-ImageNet paper recipes, and data parallelism."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from metaft.stages import main
from tests.data import miniatures as mn
from tests.data.miniatures import MINI


def _lists(classes: dict[str, list[str]]) -> str:
    return "{" + ",".join(f"{s}:[{','.join(c)}]" for s, c in classes.items()) + "}"


FAST = ["trainer.max_steps=2", "trainer.val_check_interval=2", "checkpoint.every_n_train_steps=2",
        "dataset.val_episodes=2", "dataset.test_episodes=3", "dataset.meta_batch_size=2", "dataset.eval_batch_size=3",
        "dataset.ways=3", "dataset.queries=2", "dataset.image_size=32", "model=resnet12", "model.channels=[4,4,6,8]",
        "progress=log"]


@pytest.mark.parametrize("algorithm", ["maml", "protonet", "pretrain"])
def test_train_on_mini_imagenet_then_cross_domain_eval_and_finetune_on_cub(run_config, tmp_path, algorithm):
    mini, cub_dir, cache = tmp_path / "mini", tmp_path / "cub", tmp_path / "cache"
    mini.mkdir(), cub_dir.mkdir()
    mn.mini_pickle(mini, MINI)
    cub = mn.split_classes("cub", (3, 3, 3))
    mn.cub(cub_dir, [c for v in cub.values() for c in v], per_class=8)
    cfg = run_config("train", [f"algorithm={algorithm}", "dataset=mini_imagenet", f"dataset.data_dir={mini}",
                               f"dataset.cache_dir={cache}", f"dataset.class_lists={_lists(MINI)}", *FAST], "train")
    assert cfg.model.in_channels == 3 and cfg.model.image_size == 32
    results = main(cfg) or json.loads((Path(cfg.hydra.runtime.output_dir) / "results.json").read_text())
    assert results["test/episodes"] == 3 and 0 <= results["test/acc"] <= 100
    ckpt = results["ckpt"]
    # the same checkpoint on its own test episodes (read again from the cache) gives the same numbers
    same = run_config("eval", [f"ckpt_path={ckpt}"], "eval_same")
    main(same)
    again = json.loads((Path(same.hydra.runtime.output_dir) / "results.json").read_text())
    assert again["test/acc"] == results["test/acc"]
    assert again["test_episodes_fingerprint"] == results["test_episodes_fingerprint"]
    # cross-domain: the checkpoint's model, CUB's test classes
    ev = run_config("eval", [f"ckpt_path={ckpt}", "dataset=cub", f"dataset.data_dir={cub_dir}", f"dataset.cache_dir={cache}",
                             f"dataset.class_lists={_lists(cub)}", "dataset.verify=false", "dataset.image_size=32",
                             "dataset.ways=3", "dataset.queries=2", "dataset.test_episodes=4", "dataset.eval_batch_size=2"], "eval")
    main(ev)
    res = json.loads((Path(ev.hydra.runtime.output_dir) / "results.json").read_text())
    assert res["test/episodes"] == 4
    stored = OmegaConf.load(Path(ev.hydra.runtime.output_dir) / "eval_config.yaml")
    assert stored.dataset.name == "cub" and list(stored.model.channels) == [4, 4, 6, 8]  # the checkpoint's model
    init = "init=pretrained" if algorithm == "pretrain" else "init=meta"
    ft = run_config("finetune", [f"meta_ckpt={ckpt}", init, "target=cub", f"target.data_dir={cub_dir}",
                                 f"target.cache_dir={cache}", f"target.class_lists={_lists(cub)}", "target.verify=false",
                                 "target.image_size=32", "target.ways=3", "target.shots=2", "target.val_per_class=2",
                                 "target.test_per_class=3", "trainer.max_steps=3", "trainer.val_check_interval=3",
                                 "progress=log"], "finetune")
    main(ft)
    res = json.loads((Path(ft.hydra.runtime.output_dir) / "results.json").read_text())
    assert res["test_examples"] == 9 and set(res["target_classes"]) <= set(cub["test"])
    # evaluation and fine-tuning on CUB decoded its test split only
    assert sorted(p.name.split("_")[1] for p in cache.iterdir() if p.name.startswith("cub_")) == ["test"]


def test_image_folder_stage_1_and_2_with_conv4_at_84_px(run_config, tmp_path):
    names = [f"kind_{i}" for i in range(9)]
    mn.image_folder(tmp_path / "imgs", names, per_class=8, size=40)
    for s, part in (("train", names[:3]), ("val", names[3:6]), ("test", names[6:])):
        (tmp_path / f"{s}.txt").write_text("\n".join(part) + "\n")
    lists = [f"dataset.class_lists.{s}={tmp_path / s}.txt" for s in ("train", "val", "test")]
    overrides = [o for o in FAST if not o.startswith(("model", "dataset.image_size"))]
    cfg = run_config("train", ["dataset=image_folder", f"dataset.data_dir={tmp_path / 'imgs'}",
                               f"dataset.cache_dir={tmp_path / 'c'}", *lists, "model=conv4_84", "model.filters=4",
                               "algorithm=protonet", *overrides], "train")
    assert cfg.model.in_channels == 3 and cfg.model.image_size == 84
    main(cfg)
    res = json.loads((Path(cfg.hydra.runtime.output_dir) / "results.json").read_text())
    assert res["test/episodes"] == 3
    ft = run_config("finetune", [f"meta_ckpt={res['ckpt']}", "target=image_folder",
                                 f"target.data_dir={tmp_path / 'imgs'}", f"target.cache_dir={tmp_path / 'c'}",
                                 f"target.class_lists.test={tmp_path / 'test.txt'}", "target.ways=3", "target.shots=2",
                                 "target.val_per_class=2", "target.test_per_class=3", "trainer.max_steps=2",
                                 "trainer.val_check_interval=2", "progress=log"], "finetune")
    main(ft)
    out = json.loads((Path(ft.hydra.runtime.output_dir) / "results.json").read_text())
    assert out["train_examples"] == 6 and sorted(out["target_classes"]) == names[6:]


@pytest.mark.parametrize("algorithm,model,filters,batch", [
    ("maml", "Conv4", 32, 4), ("fomaml", "Conv4", 32, 4), ("anil", "Conv4", 32, 4), ("metasgd", "Conv4", 32, 4),
    ("boil", "Conv4", 32, 4),
    ("protonet", "Conv4", 64, 1), ("reptile", "Conv4", 32, 5), ("metaoptnet", "ResNet12", None, 8),
    ("pretrain", "ResNet12", None, 4)])
def test_mini_imagenet_paper_recipes_compose(run_config, algorithm, model, filters, batch):
    import hydra

    cfg = run_config("train", ["experiment=mini_imagenet_paper", f"algorithm={algorithm}"], algorithm)
    assert cfg.dataset.name == "mini_imagenet" and cfg.dataset.queries in (1, 6, 15)
    assert cfg.dataset.meta_batch_size == batch and cfg.model.in_channels == 3 and cfg.model.image_size == 84
    net = hydra.utils.instantiate(cfg.model)
    assert type(net).__name__ == model
    if model == "Conv4":
        assert cfg.model.filters == filters and net.feature_dim == filters * 5 * 5
    else:  # MetaOptNet flattens the last map, RFS averages it
        assert net.feature_dim == (16000 if algorithm == "metaoptnet" else 640)


@pytest.mark.slow
def test_two_ranks_read_the_cache_and_give_the_one_rank_update(run_config, tmp_path):
    """hardware=ddp_cpu spawns two processes, each with a pickled copy of the datamodule (which
    reopens the memory-mapped cache) and its share of every meta-batch and test batch."""
    (tmp_path / "mini").mkdir()
    mn.mini_pickle(tmp_path / "mini", MINI)
    runs = {}
    for hw in ("cpu", "ddp_cpu"):
        cfg = run_config("train", ["algorithm=protonet", "dataset=mini_imagenet", f"dataset.data_dir={tmp_path / 'mini'}",
                                   f"dataset.cache_dir={tmp_path / 'cache'}", f"dataset.class_lists={_lists(MINI)}",
                                   *FAST, "trainer.max_steps=3", "dataset.test_episodes=4", f"hardware={hw}"], hw)
        main(cfg)
        out = Path(cfg.hydra.runtime.output_dir)
        runs[hw] = (torch.load(out / "checkpoints" / "last.ckpt", weights_only=True),
                    json.loads((out / "results.json").read_text()))
    (one, r1), (two, r2) = runs["cpu"], runs["ddp_cpu"]
    diff = max((one["state_dict"][k] - two["state_dict"][k]).abs().max().item() for k in one["state_dict"])
    assert diff < 1e-5
    assert r1["test/episodes"] == r2["test/episodes"] == 4
    assert r2["test/acc"] == pytest.approx(r1["test/acc"], rel=1e-4)
