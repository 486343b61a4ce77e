"""The study's configs composed by Hydra (presets through defaults lists, named sets given whole),
and a study that needs no checkout: its outputs and stage-1 runs where it is started."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from metaft.study import presets

BASE = """\
name: base
target: {ways: [5, 20], shots: [1, 5], problems: 600}
inits: {random: null, pretrain: pretrain, maml: maml, anil: anil}
variants: {warm: [metabaseline, "algorithm.init_ckpt=CKPT(pretrain)"], other: [protonet]}
"""


def write(directory: Path, **configs: str) -> Path:
    directory.mkdir(exist_ok=True)
    for name, text in configs.items():
        (directory / f"{name}.yaml").write_text(text)
    return directory


def test_a_preset_merges_settings_and_gives_its_named_sets_whole(tmp_path):
    d = write(tmp_path / "study", base=BASE,
              cpu="defaults: [base, _self_]\nname: cpu\ntarget: {ways: [5]}\ninits: {maml: maml}\n",
              # a preset of a preset that writes no named set: the nearest one that does gives it
              tiny="defaults: [cpu, _self_]\nname: tiny\ntarget: {problems: 10}\n")
    cpu, tiny = presets.load("cpu", d), presets.load("tiny", d)
    assert OmegaConf.to_container(cpu.target) == {"ways": [5], "shots": [1, 5], "problems": 600}
    assert OmegaConf.to_container(cpu.inits) == {"maml": "maml"}  # replaced, not merged into the base's four
    assert set(cpu.variants) == {"warm", "other"}  # not written by the preset: the base's
    assert tiny.name == "tiny" and OmegaConf.to_container(tiny.target) == {"ways": [5], "shots": [1, 5], "problems": 10}
    assert OmegaConf.to_container(tiny.inits) == {"maml": "maml"}


def test_the_last_config_of_the_defaults_list_that_writes_a_named_set_gives_it(tmp_path):
    # _self_ first: the base is merged after the preset, so the base's settings and inits win, as
    # Hydra orders any setting.
    d = write(tmp_path / "study", base=BASE,
              under="defaults: [_self_, base]\nname: under\nvariants: {mine: [maml]}\ninits: {maml: maml}\n")
    cfg = presets.load("under", d)
    assert cfg.name == "base" and set(cfg.inits) == {"random", "pretrain", "maml", "anil"}
    assert set(cfg.variants) == {"warm", "other"}


def test_unknown_studies_missing_bases_and_the_old_base_key_are_refused(tmp_path):
    d = write(tmp_path / "study", base=BASE, orphan="defaults: [nowhere, _self_]\nname: orphan\n",
              old="base: base\nname: old\n", a="defaults: [b, _self_]\nname: a\n", b="defaults: [a, _self_]\nname: b\n")
    with pytest.raises(ValueError, match=r"no study named 'nope'.*studies: a, b, base, old, orphan"):
        presets.load("nope", d)
    with pytest.raises(ValueError, match="orphan.yaml.*nowhere"):
        presets.load("orphan", d)
    with pytest.raises(ValueError, match=r"name the study it changes in a defaults list \(defaults: \[base, _self_\]\)"):
        presets.load("old", d)
    with pytest.raises(ValueError, match="a.yaml: its defaults list comes back to it"):
        presets.load("a", d)


def test_the_shipped_preset_is_composed_over_the_full_study():
    from metaft.study.driver import load_config

    full, cpu = load_config("omniglot"), load_config("omniglot_cpu")
    own = OmegaConf.load(presets.study_dir() / "omniglot_cpu.yaml")
    assert list(own.defaults) == ["omniglot", "_self_"] and "base" not in own
    assert OmegaConf.to_container(cpu.inits) == OmegaConf.to_container(own.inits)
    assert OmegaConf.to_container(cpu.variants) == OmegaConf.to_container(own.variants)
    assert cpu.dataset == full.dataset and cpu.primary == full.primary  # what the preset leaves is the full study's
    with pytest.raises(ValueError, match="write KEY=VALUE with a key of conf/study/omniglot_cpu.yaml"):
        load_config("omniglot_cpu", ["target.wayz=[5]"])
    # An override of a named set replaces it whole too.
    assert OmegaConf.to_container(load_config("omniglot_cpu", ["inits={maml: maml}"]).inits) == {"maml": "maml"}


def test_the_study_writes_and_trains_where_it_is_started_without_a_checkout(tmp_path, monkeypatch):
    from metaft.study import driver, stage1

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("METAFT_ROOT", str(tmp_path / "no_checkout"))  # a project root would be refused
    cfg = driver.load_config("sinusoid")
    out = driver.output_dir(cfg, None)
    assert out.parent == elsewhere / "outputs" / "study" / "sinusoid" and out.is_dir()
    # A stage-1 run starts in the same directory and imports the same metaft as the study.
    show = [sys.executable, "-c", "import os, metaft; print(os.getcwd()); print(metaft.__file__)"]
    log = tmp_path / "run.log"
    assert stage1.run_all([show], [log], jobs=1) == [0]
    cwd, package = log.read_text().split()
    assert Path(cwd) == elsewhere
    assert Path(package).resolve().parent == Path(presets.__file__).resolve().parents[1]
