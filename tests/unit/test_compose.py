"""Configs composed by Hydra outside a run (metaft.runtime.compose): a group option over the parts its
defaults list names, in Hydra's order, and the algorithm catalogue reading them so."""
from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from metaft.runtime.compose import group_option, parts


def test_a_group_option_is_composed_in_hydras_order(tmp_path: Path):
    conf = tmp_path / "conf"
    (conf / "algorithm" / "_base").mkdir(parents=True)
    (conf / "algorithm" / "_base" / "common.yaml").write_text("# @package algorithm\nlr: 0.1\nsteps: 1\n")
    (conf / "algorithm" / "_base" / "inner.yaml").write_text("# @package algorithm\ndefaults:\n  - common\nsteps: 5\n")
    (conf / "algorithm" / "mine.yaml").write_text("defaults:\n  - _base/inner\n_target_: a.B\nlr: 0.01\n")
    # _self_ first: the parts named after it win (a merge of the file over its parents would not)
    (conf / "algorithm" / "under.yaml").write_text("defaults:\n  - _self_\n  - _base/inner\n_target_: a.C\nsteps: 9\n")
    assert OmegaConf.to_container(group_option(conf, "algorithm", "mine")) == {"lr": 0.01, "steps": 5, "_target_": "a.B"}
    assert group_option(conf, "algorithm", "under").steps == 5
    # The parts of a composition, in merge order, each its own file's settings.
    (conf / "top.yaml").write_text("defaults:\n  - algorithm: mine\n  - _self_\nname: top\n")
    assert [(p.path, p.package) for p in parts(conf, "top")] == [
        ("algorithm/_base/common", "algorithm"), ("algorithm/_base/inner", "algorithm"),
        ("algorithm/mine", "algorithm"), ("top", "")]


def test_the_catalogue_composes_every_algorithm_through_hydra():
    from metaft.algorithms import catalogue

    maml, pretrain = catalogue.algorithm_config("maml"), catalogue.algorithm_config("pretrain")
    assert "defaults" not in maml and maml.inner_steps == 1 and maml.nonfinite == "raise"  # _base/inner_loop, _base/common
    assert pretrain.inner_steps == 0 and "first_order" not in pretrain  # _base/common only
