"""The schema of metaft's settings (metaft.runtime.schema, in Hydra's ConfigStore) types the checks
run before a job, and they apply to a user's own configs (--config-dir, hydra.searchpath) too."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import DictConfig, ListConfig, OmegaConf

from tests.workflow.conftest import FAST, ROOT, train_cli

CONF = ROOT / "conf"


def test_the_schemas_are_in_the_config_store_and_give_the_types():
    from hydra.core.config_store import ConfigStore

    from metaft.runtime.schema import EvalSchema, FinetuneSchema, TrainSchema, register, setting, stored_schema

    register()
    assert OmegaConf.get_type(ConfigStore.instance().load("schema/train.yaml").node) is TrainSchema
    assert stored_schema("eval") is EvalSchema and stored_schema("finetune") is FinetuneSchema
    assert stored_schema("mine") is None
    assert setting(TrainSchema, "algorithm.optimizer.lr").type is float
    assert setting(FinetuneSchema, "target.shots").words == ("all",)
    assert setting(TrainSchema, "dataset.no_such_key") is None


def test_types_come_from_the_schema_not_from_the_key():
    from metaft.runtime.schema import TrainSchema
    from metaft.runtime.validate import type_problem

    # Declared real numbers take reals whatever their default is written as.
    assert type_problem("model.feature_scale", 40.5, 40, TrainSchema) is None
    # A key the schema does not declare follows its default's type, whatever its name says
    # (the former key-suffix guess took a *_lr key for a real number).
    assert "wants a whole number" in type_problem("algorithm.my_lr", 0.5, 1, TrainSchema)
    # Declared settings are checked even where the default is null or an interpolation.
    assert "wants a whole number" in type_problem("dataset.eval_queries", "many", None, TrainSchema)
    assert "wants one of auto, bar, log" in type_problem("progress", "spinner", "auto", TrainSchema)
    assert type_problem("trainer.devices", "auto", 1, TrainSchema) is None


def _leaves(node, prefix=""):
    for k in node.keys():
        if OmegaConf.is_interpolation(node, k) or k == "defaults":
            continue
        child = node._get_node(k)
        if isinstance(child, DictConfig):
            yield from _leaves(child, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", OmegaConf.to_container(child) if isinstance(child, ListConfig) else child._value()


@pytest.mark.parametrize("group, schema", [("algorithm", "train"), ("dataset", "train"), ("model", "train"),
                                           ("target", "finetune"), ("recipe", "train"), ("experiment", "train"),
                                           ("", "train"), ("", "finetune")])
def test_every_shipped_config_fits_the_schema(group, schema):
    from metaft.runtime.schema import SCHEMAS
    from metaft.runtime.validate import type_problem

    files = sorted((CONF / group).rglob("*.yaml")) if group else [CONF / f"{schema}.yaml"]
    problems = []
    for f in files:
        node = OmegaConf.load(f)
        if not isinstance(node, DictConfig):
            continue
        # group options sit under their group's key; recipes and experiments are global (@package _global_)
        prefix = f"{group}." if group in ("algorithm", "dataset", "model", "target") else ""
        for key, value in _leaves(node, prefix):
            if value == "???":
                continue
            problem = type_problem(key, value, value, SCHEMAS[schema])
            if problem:
                problems.append(f"{f.relative_to(CONF)}: {problem}")
    assert not problems


@pytest.fixture
def user_configs(tmp_path) -> Path:
    """A user's config directory: an experiment with a typo, an algorithm, and a logger of its own."""
    root = tmp_path / "my_conf"
    for sub in ("experiment", "algorithm", "logger"):
        (root / sub).mkdir(parents=True)
    (root / "experiment" / "typo.yaml").write_text(
        "# @package _global_\ntrainer:\n  max_step: 100\nalgorithm:\n  inner_lr: fast\n")
    (root / "algorithm" / "slow_maml.yaml").write_text("defaults:\n  - maml\ninner_lr: 0.001\ninner_stpes: 2\n")
    (root / "logger" / "table.yaml").write_text(
        "table:\n  _target_: lightning.pytorch.loggers.CSVLogger\n  save_dir: ${paths.output_dir}\n  name: table\n"
        "  version: ''\n")
    return root


def test_a_typo_in_a_config_dir_config_gets_did_you_mean_before_anything_runs(tmp_path, user_configs):
    proc = train_cli(["--config-dir", str(user_configs), "experiment=typo", "algorithm=slow_maml"], cwd=tmp_path,
                     timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "experiment/typo.yaml in " in proc.stderr
    assert "trainer.max_step: did you mean trainer.max_steps?" in proc.stderr
    assert "algorithm.inner_lr='fast': algorithm.inner_lr wants a number" in proc.stderr
    assert "algorithm/slow_maml.yaml in " in proc.stderr and "did you mean algorithm.inner_steps" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "outputs").exists()


def test_a_config_dir_option_misspelt_on_the_command_line_is_suggested(tmp_path, user_configs):
    from metaft.runtime.validate import ConfigError, check_overrides

    with pytest.raises(ConfigError, match="did you mean algorithm=slow_maml"):
        check_overrides(CONF, "train", ["algorithm=slow_mamll"], [str(user_configs)])
    with pytest.raises(ConfigError, match="did you mean logger=table"):
        check_overrides(CONF, "train", [f"hydra.searchpath=[file://{user_configs}]", "logger=tabel"])
    with pytest.raises(ConfigError, match="did you mean trainer.max_steps"):
        check_overrides(CONF, "train", ["trainer.max_step=3"], [str(user_configs)])


def test_a_new_logger_is_one_yaml_file_in_the_users_search_path(tmp_path, user_configs):
    run = tmp_path / "run"
    proc = train_cli([f"hydra.searchpath=[file://{user_configs}]", "logger=table", *FAST, f"hydra.run.dir={run}"],
                     cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    header = (run / "table" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "val/mse" in header
    assert "test/mse" in json.loads((run / "results.json").read_text())


def test_config_path_is_read_from_the_command_line_and_checked():
    from metaft.runtime.validate import Command, split_argv

    assert split_argv(["-cp", "/my/conf", "--config-name=mine", "a=1"]) == Command("mine", ["a=1"], [], "/my/conf")
    assert split_argv(["--config-path=/my/conf", "a=1"]) == Command("train", ["a=1"], [], "/my/conf")


@pytest.fixture
def own_tree(user_configs) -> Path:
    """A user's primary config for --config-path: it builds on the package's train config through its
    own hydra.searchpath (lightning-hydra-template's way), with a typo of its own."""
    (user_configs / "mine.yaml").write_text("defaults:\n  - train\n  - _self_\nhydra:\n  searchpath:\n"
                                            "    - pkg://metaft.conf\ntrainer:\n  max_step: 5\n")
    return user_configs


def test_a_config_path_gets_the_checks_of_a_config_dir(tmp_path, own_tree):
    from metaft.runtime.validate import ConfigError, check_overrides

    # The user's own file, checked against the config the package composes: did you mean.
    with pytest.raises(ConfigError, match=r"mine.yaml in .*trainer.max_step: did you mean trainer.max_steps\?"):
        check_overrides("pkg://metaft.conf", "mine", [], config_path=str(own_tree))
    # The command line, against the user's primary config and the groups of its search path.
    with pytest.raises(ConfigError) as e:
        check_overrides("pkg://metaft.conf", "mine", ["algorithm=slow_mamll", "seeed=1"], config_path=str(own_tree))
    assert "did you mean algorithm=slow_maml" in str(e.value)
    (own_tree / "clean.yaml").write_text("defaults:\n  - train\n  - _self_\nhydra:\n  searchpath:\n"
                                         "    - pkg://metaft.conf\ntrainer:\n  max_steps: 5\n")
    check_overrides("pkg://metaft.conf", "clean", ["algorithm=anil", "seed=1"], config_path=str(own_tree))  # no problem
    # The same from the command line, short flags included: refused before a run directory exists.
    proc = train_cli(["-cp", str(own_tree), "-cn", "mine", "algorithm=slow_maml"], cwd=tmp_path, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "trainer.max_step: did you mean trainer.max_steps?" in proc.stderr
    assert "algorithm/slow_maml.yaml in " in proc.stderr and "did you mean algorithm.inner_steps" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "outputs").exists()
