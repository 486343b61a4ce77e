"""A checkpoint is never scored on Omniglot characters it has seen: evaluation, Lake's runs,
fine-tuning targets and the study refuse, naming how many and which, before any data is read
(the data directories below do not exist, or hold only class lists)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from metaft.checkpoint import CLASSES_KEY
from metaft.data.identity import check_unseen, dataset_classes, omniglot_classes

ROOT = Path(__file__).resolve().parents[2]
OMNIGLOT = {"_target_": "metaft.data.OmniglotDataModule", "split": "vinyals"}


def _shared_omniglot() -> Path:
    d = Path(OmegaConf.load(ROOT / "conf" / "paths" / "default.yaml").data_dir)
    return (d if d.is_absolute() else (ROOT / d).resolve()) / "omniglot"


VINYALS_LISTS = _shared_omniglot() / "splits" / "vinyals"


def _fake_checkpoint(path: Path, dataset: dict, classes: dict | None) -> Path:
    """A checkpoint holding only a stored config and classes (the refusal must come before its weights)."""
    data = {"state_dict": {}, "metaft_config": {"dataset": dataset, "seed": 0}}
    if classes is not None:
        data[CLASSES_KEY] = classes
    torch.save(data, path)
    return path


def _lists(root: Path, train: list[str], val: list[str], test: list[str]) -> Path:
    """A data directory holding only Vinyals-style class lists."""
    d = root / "splits" / "vinyals"
    d.mkdir(parents=True)
    for name, lines in (("train", train), ("val", val), ("test", test)):
        (d / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return root


def test_lake_split_classes_from_the_packaged_alphabets():
    lake = omniglot_classes("lake")
    assert [len(lake.splits[s]) for s in ("train", "val", "test")] == [813, 151, 659]
    assert dataset_classes({"_target_": "metaft.data.OmniglotRunsDataModule"}).splits["test"] == lake.splits["test"]
    assert dataset_classes({"_target_": "metaft.data.SinusoidDataModule"}) is None


@pytest.mark.needs_data(VINYALS_LISTS, "the Vinyals class lists")
def test_vinyals_and_lake_overlap_one_way_only():
    """Vinyals' training characters include 236 of the evaluation alphabets' (Lake's test, and the
    source of Lake's runs); Lake's training and validation characters include none of Vinyals' test
    characters (all 423 are evaluation-alphabet characters), so that direction is allowed."""
    vinyals = omniglot_classes("vinyals", VINYALS_LISTS.parents[1])
    lake = omniglot_classes("lake")
    with pytest.raises(ValueError, match=r"scores 236 of its 659 test classes .* 236 in its train classes"):
        check_unseen({CLASSES_KEY: vinyals.stored()}, lake, "test", "dataset omniglot split=lake", "ckpt")
    note = check_unseen({CLASSES_KEY: lake.stored()}, vinyals, "test", "dataset omniglot split=vinyals", "ckpt")
    assert note == {"allow_seen_classes": False, "class_check": "passed: none of the 423 scored classes was seen"}


@pytest.mark.needs_data(VINYALS_LISTS, "the Vinyals class lists")
@pytest.mark.parametrize("override", [["dataset=omniglot_runs"], ["++dataset.split=lake"]])
def test_eval_refuses_a_vinyals_checkpoint_on_lake_classes(run_config, tmp_path, override):
    from metaft.stages import main

    stored = omniglot_classes("vinyals", VINYALS_LISTS.parents[1]).stored()
    ckpt = _fake_checkpoint(tmp_path / "vinyals.ckpt", {**OMNIGLOT, "data_dir": str(tmp_path / "nowhere")}, stored)
    cfg = run_config("eval", [f"ckpt_path={ckpt}", *override], "eval")
    with pytest.raises(ValueError, match=r"scores 236 of its 659 test classes .*allow_seen_classes=true"):
        main(cfg)


def test_a_rotated_training_character_is_not_a_held_out_class(run_config, tmp_path):
    from metaft.stages import main

    trained = _lists(tmp_path / "a", ["A/character01/rot000", "A/character02/rot000"], ["B/character01/rot000"],
                     ["C/character01/rot000"])
    stored = omniglot_classes("vinyals", trained).stored()
    # Another run's lists whose test classes hold character01 of A turned by 90 degrees.
    scored = _lists(tmp_path / "b", ["C/character01/rot000"], ["B/character01/rot000"],
                    ["A/character01/rot090", "D/character01/rot000"])
    ckpt = _fake_checkpoint(tmp_path / "a.ckpt", {**OMNIGLOT, "data_dir": str(trained)}, stored)
    cfg = run_config("eval", [f"ckpt_path={ckpt}", f"++dataset.data_dir={scored}"], "eval")
    with pytest.raises(ValueError, match=r"scores 1 of its 2 test classes .*1 in its train classes \(A/character01\)"):
        main(cfg)


def test_a_rotation_of_a_character_in_two_splits_is_refused(tmp_path):
    lists = _lists(tmp_path, ["A/character01/rot000"], ["B/character01/rot000"], ["A/character01/rot180"])
    with pytest.raises(ValueError, match=r"train and test class lists share 1 classes \(A/character01\)"):
        omniglot_classes("vinyals", lists)


def test_more_lake_validation_alphabets_than_trained_are_refused():
    stored = {CLASSES_KEY: omniglot_classes("lake", lake_val_alphabets=5).stored()}
    check_unseen(stored, omniglot_classes("lake", lake_val_alphabets=1), "val", "here", "ckpt")  # a subset: allowed
    with pytest.raises(ValueError, match=r"scores \d+ of its \d+ val classes .* in its train classes"):
        check_unseen(stored, omniglot_classes("lake", lake_val_alphabets=6), "val", "here", "ckpt")


def test_old_checkpoint_without_classes(run_config, tmp_path):
    from metaft.stages import main

    nowhere = str(tmp_path / "nowhere")
    ckpt = _fake_checkpoint(tmp_path / "old.ckpt", {**OMNIGLOT, "split": "lake", "data_dir": nowhere}, None)
    with pytest.raises(ValueError, match=r"does not store the classes it was trained on .* is unknown\. Re-train .*"
                                         r"allow_seen_classes=true"):
        main(run_config("eval", [f"ckpt_path={ckpt}"], "eval"))
    # With the override the check is skipped (and recorded); the missing data is the next error.
    with pytest.raises(Exception, match="nowhere does not exist"):
        main(run_config("eval", [f"ckpt_path={ckpt}", "allow_seen_classes=true"], "eval_allowed"))
    note = check_unseen(torch.load(ckpt), omniglot_classes("lake"), "test", "here", "ckpt", allow=True)
    assert note["allow_seen_classes"] is True and "not checked" in note["class_check"]


def test_finetune_target_refused_before_its_data(run_config, tmp_path):
    from metaft.stages import main
    from tests.finetune.conftest import CONV_CFG

    stored = omniglot_classes("lake").stored()
    torch.save({"state_dict": {}, CLASSES_KEY: stored,
                "metaft_config": {"model": CONV_CFG, "algorithm": {"_target_": "metaft.algorithms.MAML"},
                                  "dataset": {**OMNIGLOT, "split": "lake"}}}, tmp_path / "lake.ckpt")
    # A Vinyals-style target whose test class is a character of a background (Lake training) alphabet.
    trained = _lists(tmp_path / "v", ["A/character01/rot000"], ["B/character01/rot000"],
                     ["Alphabet_of_the_Magi/character01/rot000"])
    cfg = run_config("finetune", [f"meta_ckpt={tmp_path / 'lake.ckpt'}", "target=omniglot", "target.split=vinyals",
                                  f"target.data_dir={trained}"], "ft")
    with pytest.raises(ValueError, match=r"the target scores 1 of its 1 test classes .*Alphabet_of_the_Magi/character01"):
        main(cfg)


def test_study_refuses_a_checkpoint_trained_on_its_classes():
    from metaft.study import evaluate
    from metaft.study.driver import load_config

    cfg = load_config("omniglot", ["dataset.split=lake"])
    lake = omniglot_classes("lake").stored()
    checkpoint = {"metaft_config": {"dataset": {**OMNIGLOT, "split": "lake"}, "model": dict(cfg.random_model)},
                  CLASSES_KEY: lake}
    evaluate.check("maml", checkpoint, cfg)  # Lake's test alphabets were held out
    seen = {**lake, "train": lake["train"] + ["Atlantean/character01"]}  # an evaluation-alphabet character
    with pytest.raises(ValueError, match=r"study's test problems scores 1 of its 659 test classes"):
        evaluate.check("maml", {**checkpoint, CLASSES_KEY: seen}, cfg)
    evaluate.check("maml", {**checkpoint, CLASSES_KEY: seen}, load_config("omniglot", ["dataset.split=lake",
                                                                                     "allow_seen_classes=true"]))


def test_omniglot_training_stores_its_classes(run_config, tmp_path):
    """Trained through train.py: the checkpoint keeps the Lake split's characters."""
    from metaft.stages import main
    from tests.conftest import tiny_lake_protonet

    omni = _shared_omniglot()
    if not (omni / "images_background.zip").is_file():
        pytest.skip("needs the Omniglot zips")
    cfg = run_config("train", tiny_lake_protonet(omni.parent, tmp_path / "cache"), "train")
    main(cfg)
    ckpt = next((Path(cfg.hydra.runtime.output_dir) / "checkpoints").glob("*.ckpt"))
    stored = torch.load(ckpt, weights_only=False)[CLASSES_KEY]
    assert stored["source"] == "omniglot" and len(stored["train"]) == 813 and len(stored["val"]) == 151
    assert "Angelic/character01" not in stored["train"]  # an evaluation alphabet
    assert json.dumps(stored)  # plain data
