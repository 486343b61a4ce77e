"""The study driver end to end on sinusoid at a toy size: paired problems, the report, resuming,
and checkpoints that do not fit refused before anything runs."""
from __future__ import annotations

import csv
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from metaft.models import MLP
from metaft.study.driver import main
from tests.finetune.conftest import MLP_CFG, save_ckpt

SINUSOID = {"_target_": "metaft.data.SinusoidDataModule"}
TOY = ["stage1.seeds=[0,1]", "inits={random: null, maml: maml}", "pretrained=[random]", "target.shots=[2,5]",
       "target.problems=6", "target.finetune_problems=3", "target.chunk=4", "adapt.finetune.max_steps=4",
       "adapt.finetune.eval_every=2", "adapt.finetune.val_problems=3", "primary.pretrained=random",
       "controls=null"]  # the preset's control needs its inits (tests/study/test_controls.py runs one)


def maml_ckpts(tmp_path: Path, dataset: dict = SINUSOID) -> str:
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        paths.append(str(save_ckpt(tmp_path / f"maml{seed}.ckpt", MLP(), MLP_CFG, dataset=dataset,
                                   extra={})))
    return "maml=" + ",".join(paths)


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_every_init_is_adapted_on_the_same_problems_and_reported(tmp_path):
    out = tmp_path / "study"
    assert main(["sinusoid", *TOY, "--out", str(out), "--ckpt", maml_ckpts(tmp_path)]) == 0
    table = rows(out / "study.csv")
    problems: dict[tuple, set] = defaultdict(set)
    for r in table:
        problems[r["shots"], r["adaptation"], r["init"], r["seed"]].add(r["fingerprint"])
    for (shots, adaptation, init, seed), fps in problems.items():
        # The same problems for every init and seed at this K and adaptation (paired) ...
        assert fps == problems[shots, adaptation, "maml", "0"], (shots, adaptation, init, seed)
    # ... and other problems at another K (nested: more labels, the same queries); full fine-tuning
    # takes the first of the same problems.
    assert problems["2", "probe", "random", "0"].isdisjoint(problems["5", "probe", "random", "0"])
    assert problems["2", "finetune", "maml", "1"] < problems["2", "probe", "maml", "1"]
    assert {r["adaptation"] for r in table if r["init"] == "random"} == {"probe", "finetune"}  # no inner loop
    assert {r["adaptation"] for r in table if r["init"] == "maml"} == {"probe", "finetune", "inner"}
    text = (out / "study.md").read_text()
    assert "## The answer" in text and "maml" in text and "inductive" in text
    # Checkpoints given without their stage-1 run: no convergence can be read, and the report says so.
    assert "| maml (convergence unknown) |" in text and "**Not the converged answer: maml " in text
    assert "random (convergence unknown)" not in text  # the random init has no stage 1
    assert f"--out {out}" in text and "target.problems=6" in text  # the command that continues it
    assert (out / "study.png").is_file() and any((out / "tensorboard").iterdir())
    # Each fine-tuned problem keeps its curve (max_steps=4, evaluated every 2) for the convergence plot.
    from metaft.study.analysis import parse_curve

    steps, mse = parse_curve(next(r for r in table if r["adaptation"] == "finetune")["curve"])
    assert steps == [0, 2, 4] and len(mse) == 3 and (out / "study_convergence.png").is_file()


def test_an_interrupted_study_continues_without_recomputing(tmp_path):
    out, ckpts = tmp_path / "study", maml_ckpts(tmp_path)
    assert main(["sinusoid", *TOY, "--out", str(out), "--ckpt", ckpts]) == 0
    pieces = sorted((out / "rows").rglob("*.csv"))
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in pieces}
    lost = pieces[3]
    lost.unlink()  # as if the study had stopped before this piece
    (out / "study.csv").unlink()
    assert main(["sinusoid", *TOY, "--out", str(out), "--ckpt", ckpts]) == 0
    for p, (data, mtime) in before.items():
        if p != lost:  # finished pieces were not recomputed
            assert (p.read_bytes(), p.stat().st_mtime_ns) == (data, mtime)
    # The lost piece recomputed gives the same numbers (its seconds are timings, not results).
    timings = ("seconds_to_final", "seconds_per_step")
    timeless = [{k: v for k, v in r.items() if k not in timings} for r in rows(lost)]
    lost.write_bytes(before[lost][0])
    assert timeless == [{k: v for k, v in r.items() if k not in timings} for r in rows(lost)]
    assert len(rows(out / "study.csv")) == sum(len(rows(p)) for p in pieces)
    # Other settings never mix into an existing study.
    assert main(["sinusoid", *TOY, "target.problems=7", "--out", str(out), "--ckpt", ckpts]) == 2


def test_a_checkpoint_of_another_dataset_is_refused_before_anything_runs(tmp_path, capsys):
    out = tmp_path / "study"
    omniglot = {"_target_": "metaft.data.OmniglotDataModule", "split": "vinyals"}
    assert main(["sinusoid", *TOY, "--out", str(out), "--ckpt", maml_ckpts(tmp_path, omniglot)]) == 2
    err = capsys.readouterr().err
    assert "init maml: its checkpoint does not fit the sinusoid study: dataset metaft.data.OmniglotDataModule" in err
    assert not out.exists()
    assert main(["sinusoid", *TOY, "--ckpt", "maml=only_one.ckpt"]) == 2
    assert "give one per seed" in capsys.readouterr().err
    assert main(["sinusoid", "target.nosuch=1"]) == 2
    assert "write KEY=VALUE with a key of conf/study/sinusoid.yaml" in capsys.readouterr().err


def test_meta_baselines_stage_one_starts_from_the_same_seeds_pretrained_body(tmp_path, monkeypatch):
    """Stage 1 trains an init named in CKPT(...) first, then passes its checkpoint of the same
    seed to the dependent run (Meta-Baseline from Baseline++), without running anything here."""
    from metaft.study import driver, stage1

    cfg = driver.load_config("omniglot", ["stage1.seeds=[3,4]"])
    launched: list[list[str]] = []

    def fake_run_all(cmds, logs, jobs):
        for cmd in cmds:
            launched.append(cmd)
            run = Path(next(a for a in cmd if a.startswith("hydra.run.dir=")).split("=", 1)[1])
            (run / "checkpoints").mkdir(parents=True)
            (run / "checkpoints" / "best.ckpt").write_text("")
            (run / "results.json").write_text("{}")
        return [0] * len(cmds)

    monkeypatch.setattr(stage1, "run_all", fake_run_all)
    ckpts = stage1.train_missing(cfg, tmp_path, {})
    order = [next(a for a in c if a.startswith("hydra.run.dir=")).rsplit("/", 1)[1] for c in launched]
    assert order.index("metabaseline_seed3") > order.index("baselinepp_seed3")
    meta = next(c for c in launched if c[-1].endswith("metabaseline_seed4"))
    assert "algorithm=metabaseline" in meta
    assert f"algorithm.init_ckpt={ckpts['baselinepp', 4]}" in meta
    assert ckpts["random", 3] is None and "dataset.val_episodes=1000" in meta
    # Given Baseline++'s checkpoints, Meta-Baseline trains in the first round, beside the others.
    calls = []
    monkeypatch.setattr(stage1, "run_all", lambda cmds, logs, jobs: calls.append(cmds) or fake_run_all(cmds, logs, jobs))
    given = {"baselinepp": [str(tmp_path / "b3.ckpt"), str(tmp_path / "b4.ckpt")]}
    ckpts = stage1.train_missing(cfg, tmp_path / "again", given)
    assert len(calls) == 1 and ckpts["baselinepp", 4] == tmp_path / "b4.ckpt"
    meta = next(c for c in calls[0] if c[-1].endswith("metabaseline_seed4"))
    assert f"algorithm.init_ckpt={tmp_path / 'b4.ckpt'}" in meta and any(c[-1].endswith("maml_seed3") for c in calls[0])


def test_a_problem_on_which_one_init_diverged_is_left_out_for_every_init():
    from metaft.study.analysis import Study

    def row(init, fp, v):
        return {"init": init, "seed": "0", "ways": "5", "shots": "1", "adaptation": "finetune", "fingerprint": fp,
                "metric": str(v)}

    rows = [row("a", "p1", 50), row("a", "p2", 60), row("a", "p3", 70),
            row("b", "p1", 40), row("b", "p2", float("nan")), row("b", "p3", 90)]
    study = Study(rows, reference="a", primary=None, lower_is_better=False, alpha=0.05)
    assert study.excluded == {("5", "1", "finetune"): {"p2"}}
    diff = study.differences(("5", "finetune"))["b"]["1"].mean
    assert diff == ((40 - 50) + (90 - 70)) / 2  # p2 dropped for both inits, the rest still paired


def test_the_convergence_plot_leaves_out_a_diverged_problem_too(tmp_path):
    from metaft.study.analysis import Study, plot_convergence

    def row(init, seed, fp, curve):
        return {"init": init, "seed": seed, "ways": "5", "shots": "1", "adaptation": "finetune", "fingerprint": fp,
                "metric": str(curve[-1]), "curve": ";".join(f"{s}:{v}" for s, v in zip((0, 5), curve))}

    rows = [row(i, s, fp, (40.0 + k + int(s), 50.0 + 2 * k)) for i in ("a", "b") for s in ("0", "1")
            for k, fp in enumerate(("p1", "p2", "p3"))]
    rows[4] = row("b", "0", "p2", (45.0, float("nan")))  # init b diverged on p2 (seed 0)
    study = Study(rows, reference="a", primary=None, lower_is_better=False, alpha=0.05)
    assert plot_convergence(tmp_path, study, "acc") == [tmp_path / "study_convergence_5way.png"]


def test_full_fine_tuning_is_limited_to_the_ks_and_inits_it_is_asked_for(tmp_path):
    out = tmp_path / "study"
    assert main(["sinusoid", *TOY, "adapt.finetune.shots=[5]", "--out", str(out), "--ckpt", maml_ckpts(tmp_path)]) == 0
    table = rows(out / "study.csv")
    assert {r["shots"] for r in table if r["adaptation"] == "finetune"} == {"5"}
    assert {r["shots"] for r in table if r["adaptation"] == "probe"} == {"2", "5"}
    out = tmp_path / "study2"  # fine-tuning for maml only (the primary comparison then on the probe alone)
    assert main(["sinusoid", *TOY, "adapt.finetune.inits=[maml]", "primary.adaptations=[probe]", "--out", str(out),
                 "--ckpt", maml_ckpts(tmp_path)]) == 0
    table = rows(out / "study.csv")
    assert {r["init"] for r in table if r["adaptation"] == "finetune"} == {"maml"}
    assert {r["init"] for r in table if r["adaptation"] == "probe"} == {"maml", "random"}


def test_a_preset_changes_its_base_study_and_replaces_its_inits_whole():
    from metaft.study.driver import load_config

    full, cpu = load_config("omniglot"), load_config("omniglot_cpu")
    assert cpu.name == "omniglot_cpu" and "base" not in cpu
    assert list(cpu.target.ways) == [5] and cpu.target.test_per_class == full.target.test_per_class  # the rest inherited
    assert set(cpu.inits) < set(full.inits) and "metaoptnet" not in cpu.inits
    assert set(cpu.variants) == {"metabaseline_warm"} and cpu.variants.metabaseline_warm[1].endswith("CKPT(pretrain)")
    assert cpu.adapt.probe == full.adapt.probe and list(cpu.target.shots) == [1, 5, "all"]


def test_stage_one_runs_can_be_launched_through_a_prefix_and_a_new_neutral_setting_continues(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from metaft.study import driver, stage1

    cfg = driver.load_config("omniglot", ["stage1.prefix=[srun,--ntasks=1,--exclusive]"])
    cmd = stage1.command(cfg, "maml", 0, tmp_path / "run", {})
    assert cmd[:3] == ["srun", "--ntasks=1", "--exclusive"] and cmd[4:6] == ["-m", "metaft"]  # the installed entry point
    # A study saved before stage1.prefix existed continues; another value of a setting does not.
    out = tmp_path / "study"
    out.mkdir()
    old = driver.load_config("omniglot")
    del old.stage1["prefix"]
    OmegaConf.save(old, out / driver.CONFIG)
    assert driver.output_dir(driver.load_config("omniglot"), str(out)) == out
    with pytest.raises(ValueError, match="stage1.prefix"):
        driver.output_dir(cfg, str(out))


def test_each_stage_one_run_gets_the_same_share_of_the_cores(tmp_path, monkeypatch):
    import sys

    from metaft.study import stage1

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(stage1.os, "cpu_count", lambda: 4)
    show = [sys.executable, "-c", "import os; print(os.environ['OMP_NUM_THREADS'])"]
    logs = [tmp_path / f"{i}.log" for i in range(3)]
    assert stage1.run_all([show] * 3, logs, jobs=2) == [0, 0, 0]
    # two threads each, the third run too though it runs alone
    assert [log.read_text().strip() for log in logs] == ["2", "2", "2"]


def test_the_test_split_is_the_only_one_scored(tmp_path, capsys):
    out = tmp_path / "study"
    assert main(["sinusoid", *TOY, "target.split=val", "--out", str(out), "--ckpt", maml_ckpts(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "target.split=val is refused" in err and "use target.split=test" in err
    assert not out.exists()  # refused before anything ran
    assert main(["sinusoid", *TOY, "target.split=train", "--out", str(out)]) == 2
    assert "target.split=train is refused" in capsys.readouterr().err and not out.exists()


def test_the_primary_comparison_is_fixed_before_anything_runs(tmp_path, capsys, monkeypatch):
    from omegaconf import OmegaConf

    from metaft.study import driver, stage1

    # A primary comparison the protocol cannot hold is refused before any directory exists.
    out = tmp_path / "study"
    for bad, message in (("primary.meta=random", "primary.meta=random must be a meta-learned init"),
                         ("primary.pretrained=maml", "primary.pretrained=maml must be an init of this study listed in"),
                         ("primary.shots=[7]", "primary.shots=['7']: give K's of target.shots"),
                         ("adapt.finetune.inits=[maml]", "adapt.finetune.inits=['maml'] leaves out random"),
                         ("primary.adaptations=[finetune]", None)):
        code = main(["sinusoid", *TOY, bad, "adapt.finetune.shots=[5]", "primary.shots=[2]", "--out", str(out)]
                    if message is None else ["sinusoid", *TOY, bad, "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and not out.exists()
        assert (message or "full fine-tuning runs at K=[5] only (adapt.finetune.shots), none of primary.shots=['2']") in err
    # The protocol with its primary comparison is on disk before stage 1 starts.
    seen = {}

    def stop(cfg, out_dir, given):
        seen["saved"] = OmegaConf.load(out_dir / driver.CONFIG)
        raise RuntimeError("stopped at stage 1")

    monkeypatch.setattr(stage1, "train_missing", stop)
    assert main(["sinusoid", *TOY, "--out", str(out), "--ckpt", maml_ckpts(tmp_path)]) == 2
    assert OmegaConf.to_container(seen["saved"].primary) == {
        "meta": "maml", "pretrained": "random", "adaptations": ["finetune", "probe"], "shots": None}
    # Continuing the study with another primary comparison is refused.
    assert main(["sinusoid", *TOY, "primary.adaptations=[probe]", "--out", str(out)]) == 2
    assert "primary.adaptations" in capsys.readouterr().err


def test_the_report_answers_the_primary_comparison_and_labels_the_rest_exploratory():
    """The answer is the protocol's pair even when another meta init does better on the test problems."""
    from metaft.study.analysis import Study, answer, markdown
    from metaft.study.protocol import Primary

    rng = np.random.default_rng(0)
    rows = []
    for init, shift in (("pre", 0.0), ("maml", 5.0), ("anil", 20.0)):  # anil is best on these problems
        for seed in ("0", "1", "2"):
            for k in ("1", "5"):
                for p in range(40):
                    rows.append({"init": init, "seed": seed, "ways": "5", "shots": k, "adaptation": "probe",
                                 "fingerprint": f"{k}-{p}", "metric": str(60 + shift + p % 7 + rng.normal())})
    primary = Primary("maml", "pre", (("5", "probe", "1"), ("5", "probe", "5"), ("5", "finetune", "1")))
    study = Study(rows, reference="pre", primary=primary, lower_is_better=False, alpha=0.05)
    text = "\n".join(answer(study, "acc"))
    assert "**maml against pre**, a family of 2 hypotheses" in text and "maml beats pre at K=1" in text
    assert "anil" not in text.split("exploratory")[0]  # not picked, however good on the test problems
    assert "without data" in text and "5-way finetune K=1" in text
    diffs = study.differences(("5", "probe"))
    assert diffs["maml"]["1"].primary and not diffs["anil"]["1"].primary
    assert diffs["maml"]["1"].level == pytest.approx(1 - 0.05 / 2) or diffs["maml"]["5"].level == pytest.approx(1 - 0.05 / 2)
    assert diffs["anil"]["1"].level == 0.95 and diffs["anil"]["1"].mean == pytest.approx(20.0, abs=0.5)
    table = markdown(study, "acc", ["# x"])
    assert "expl." in table and "primary" in table
    # Without a primary comparison in the protocol (an older study), everything is exploratory.
    assert "No primary comparison was named" in answer(Study(rows, "pre", None, False, 0.05), "acc")[0]


def test_the_probe_chooses_on_its_own_validation_problems_and_fine_tuning_on_the_first_of_them(tmp_path, capsys):
    out = tmp_path / "study"
    assert main(["sinusoid", *TOY, "adapt.probe.val_problems=5", "--out", str(out), "--ckpt", maml_ckpts(tmp_path)]) == 0
    log = capsys.readouterr().out
    assert "K=2 maml probe: regularisation" in log and "chosen on 5 validation problems x 2 seeds" in log
    assert re.search(r"K=2 maml finetune: .* chosen on 3 validation problems x 2 seeds", log)  # adapt.finetune.val_problems
    from metaft.study import driver, targets

    chunks = targets.Problems(driver.load_config("sinusoid", TOY), None, 5, True).at(2)[1]
    assert [e.num_tasks for e in chunks] == [4, 1] and [e.num_tasks for e in targets.first(chunks, 3)] == [3]
