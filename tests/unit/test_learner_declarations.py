"""What a learner declares on its class (read before one is built: the catalogue, fine-tuning's
head rule and init kind) agrees with what the built learner does, for every algorithm config."""
from __future__ import annotations

import hydra
import pytest
from omegaconf import OmegaConf

from metaft.algorithms import catalogue
from metaft.models import MLP, Conv4

NAMES = catalogue.names(lambda cls, cfg: True)


def build(name: str, task: str):
    cfg = catalogue.algorithm_config(name)
    net = MLP() if task == "regression" else Conv4(filters=4, out_features=5)
    return hydra.utils.instantiate(OmegaConf.to_container(cfg), net=net, task=task)


def test_every_algorithm_config_is_listed():
    assert NAMES and len(NAMES) == len(list(catalogue.conf_dir().joinpath("algorithm").glob("*.yaml")))


@pytest.mark.parametrize("name", NAMES)
def test_the_class_declarations_match_the_built_learner(name):
    learner = build(name, "classification")
    cls, cfg = type(learner), catalogue.algorithm_config(name)
    if cls.head_per_episode:  # a head from each episode: any number of ways, net.head never trained
        assert learner.sizes_head_per_episode and not learner.trains_head and learner.body_fixed_per_task
        assert cls.untrained_head_start == "prototypes"
    else:
        assert learner.trains_head == (not cfg.get("zero_head", False))
    assert cls.has_inner_loop == (learner.inner_steps > 0)
    assert catalogue.fixed_body(cls, cfg) == learner.body_fixed_per_task


@pytest.mark.parametrize("name", NAMES)
def test_regresses_is_what_the_learner_accepts(name):
    cls = type(build(name, "classification"))
    if cls.regresses:
        assert build(name, "regression").objective.regression
    else:
        with pytest.raises(Exception, match="classification only"):  # hydra wraps the ValueError
            build(name, "regression")
