"""Command-line settings are checked before anything runs: unknown keys, wrong types, the
dataset's natural model."""
from __future__ import annotations

import pytest

from tests.workflow.conftest import ROOT, train_cli


@pytest.mark.parametrize("override, expected", [
    ("trainer.max_step=100", "trainer.max_step=100: did you mean trainer.max_steps?"),
    ("+trainer.max_step=100", "did you mean trainer.max_steps?"),
    ("algorithm.inner_lr=abc", "algorithm.inner_lr='abc': algorithm.inner_lr wants a number"),
    ("dataset.shots=abc", "dataset.shots='abc': dataset.shots wants a whole number"),
    ("trainer.max_steps=ten", "trainer.max_steps='ten': trainer.max_steps wants a whole number"),
    ("algorithm.inner_steps=1.5", "algorithm.inner_steps=1.5: algorithm.inner_steps wants a whole number"),
    ("test=maybe", "test='maybe': test wants true or false"),
])
def test_a_config_error_names_the_key_and_leaves_no_run_directory(tmp_path, override, expected):
    proc = train_cli([override], cwd=tmp_path, timeout=120)
    assert proc.returncode == 1
    assert expected in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "outputs").exists()


def test_a_sweep_value_of_the_wrong_type_stops_the_sweep_before_any_job(tmp_path):
    proc = train_cli(["-m", "seed=1,x"], cwd=tmp_path, timeout=120)
    assert proc.returncode == 1 and "seed='x': seed wants a whole number" in proc.stderr
    assert not (tmp_path / "outputs").exists()


def test_the_values_a_setting_documents_pass():
    from metaft.runtime.validate import type_problem

    assert type_problem("target.shots", "all", 5) is None
    assert type_problem("algorithm.inner_lr", 1, 0.01) is None  # an int where a float is wanted
    assert type_problem("model.feature_scale", 40, None) is None
    assert type_problem("dataset.shots", 5.0, 1) is not None
    assert type_problem("model.feature_scale", 40.5, 40) is None  # a real number a recipe writes as 40


def test_a_dataset_brings_its_natural_model_unless_one_is_chosen(run_config):
    assert run_config("train", []).model._target_.endswith("MLP")
    assert run_config("train", ["dataset=omniglot"]).model._target_.endswith("Conv4")
    assert run_config("train", ["dataset=omniglot", "model=mlp"]).model._target_.endswith("MLP")
    assert run_config("train", ["experiment=omniglot_cpu"]).model._target_.endswith("Conv4")


def test_a_regression_model_on_a_classification_dataset_advises_a_classification_model(run_config):
    from metaft.stages.meta import build

    if not (ROOT / "conf" / "dataset" / "omniglot.yaml").is_file():
        pytest.skip("no omniglot config")
    cfg = run_config("train", ["dataset=omniglot", "model=mlp"])
    with pytest.raises(ValueError, match="use a classification model, e.g. model=conv4"):
        build(cfg)


def test_a_setting_the_user_must_give_is_a_known_key(tmp_path):
    """Keys whose default is ``???`` (``target.root`` of the folder target, an image folder's
    ``dataset.data_dir``) are settings like any other: given, they pass; misspelt, they are named."""
    from metaft.runtime.validate import ConfigError, check_overrides

    check_overrides(ROOT / "conf", "finetune", ["init=random", "model=conv4", "target=folder", f"target.root={tmp_path}"])
    with pytest.raises(ConfigError, match="did you mean target.root"):
        check_overrides(ROOT / "conf", "finetune", ["target=folder", f"target.rot={tmp_path}"])


def test_a_gpu_setting_without_a_gpu_says_what_to_use(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: hardware=gpu is valid")
    proc = train_cli(["hardware=gpu", "trainer.max_steps=2"], cwd=tmp_path, timeout=120)
    assert proc.returncode == 1
    assert "needs a CUDA GPU, and torch finds none here: use hardware=cpu" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not any((tmp_path / "outputs" / "train" / "runs").glob("*"))


def test_a_setting_left_to_the_user_is_asked_for_before_anything_runs(tmp_path):
    from metaft.runtime.validate import ConfigError, check_overrides

    with pytest.raises(ConfigError, match="target.root must be given: add target.root=... to the command line"):
        check_overrides(ROOT / "conf", "finetune", ["target=folder"])
    check_overrides(ROOT / "conf", "train", [])  # the defaults leave nothing to give
    check_overrides(ROOT / "conf", "eval", ["ckpt_path=x.ckpt"])


def _problems(config_name: str, overrides: list[str]) -> list[str]:
    from metaft.runtime.validate import ConfigError, check_overrides

    with pytest.raises(ConfigError) as info:
        check_overrides(ROOT / "conf", config_name, overrides)
    return info.value.problems


def test_a_misspelt_group_option_gets_did_you_mean():
    assert _problems("train", ["algorithm=mamll"]) == [
        "algorithm=mamll: there is no algorithm mamll (conf/algorithm/mamll.yaml); did you mean algorithm=maml? "
        f"algorithm is one of: {', '.join(sorted(p.stem for p in (ROOT / 'conf' / 'algorithm').glob('*.yaml')))}"]
    # every value of a sweep, and every group at once
    problems = _problems("train", ["algorithm=maml,anill", "dataset=omniglott"])
    assert [p.split(":")[0] for p in problems] == ["algorithm=anill", "dataset=omniglott"]
    assert "did you mean dataset=omniglot?" in problems[1]


def test_a_key_of_another_dataset_says_which_dataset_has_it():
    (problem,) = _problems("train", ["dataset.ways=five"])
    assert problem.startswith("dataset.ways=five: dataset=sinusoid is regression: it has no ways; did you mean "
                              "dataset=omniglot? (ways is a setting of dataset=cifar_fs,")
    (problem,) = _problems("train", ["model.filters=3"])
    assert problem == ("model.filters=3: model=mlp: it has no filters; did you mean model=conv4? (filters is a setting "
                       "of model=conv4, model=conv4_84)")
    (problem,) = _problems("finetune", ["init=random", "model=mlp", "target.ways=5"])
    assert problem.startswith("target.ways=5: target=sinusoid is regression: it has no ways; did you mean "
                              "target=omniglot?")


def test_fine_tuning_without_a_checkpoint_is_named_with_the_other_settings(tmp_path):
    problems = _problems("finetune", ["target=omniglot", "target.shots=many"])
    assert problems == ["target.shots='many': target.shots wants a whole number (or all), e.g. target.shots=1",
                        "init=meta fine-tunes a stage-1 checkpoint: add meta_ckpt=PATH (a stage-1 run directory or "
                        "its .ckpt file), or init=random model=... to start from random weights"]
    assert _problems("finetune", [f"meta_ckpt={tmp_path / 'none.ckpt'}"]) == [
        f"meta_ckpt={tmp_path / 'none.ckpt'}: no such file or directory; give a stage-1 run directory or a .ckpt file"]
    from metaft.runtime.validate import check_overrides

    check_overrides(ROOT / "conf", "finetune", ["init=random", "model=mlp"])  # random weights need no checkpoint
    check_overrides(ROOT / "conf", "finetune", [f"ckpt_path={tmp_path}"])  # a resumed run's config names its checkpoint


def test_a_class_list_left_to_the_user_says_what_form_it_takes(tmp_path):
    problems = _problems("train", ["dataset=image_folder", f"dataset.data_dir={tmp_path}"])
    assert "dataset.class_lists.train must be given: add dataset.class_lists.train=... to the command line (a list " \
           "of class folders, e.g. [cat,dog,emu], or a text file with one folder name a line)" in problems
