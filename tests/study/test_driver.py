"""The study driver end to end on sinusoid at a toy size: paired problems, the report, resuming,
and checkpoints that do not fit refused before anything runs."""
from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import torch

from metaft.models import MLP
from metaft.study.driver import main
from tests.finetune.conftest import MLP_CFG, save_ckpt

SINUSOID = {"_target_": "metaft.data.SinusoidDataModule"}
TOY = ["stage1.seeds=[0,1]", "inits={random: null, maml: maml}", "pretrained=[random]", "target.shots=[2,5]",
       "target.problems=6", "target.finetune_problems=3", "target.chunk=4", "adapt.finetune.max_steps=4",
       "adapt.finetune.eval_every=2", "adapt.finetune.val_problems=3", "bootstrap.n=200"]


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
    # ... and other problems at another K; full fine-tuning takes the first of the same problems.
    assert problems["2", "probe", "random", "0"].isdisjoint(problems["5", "probe", "random", "0"])
    assert problems["2", "finetune", "maml", "1"] < problems["2", "probe", "maml", "1"]
    assert {r["adaptation"] for r in table if r["init"] == "random"} == {"probe", "finetune"}  # no inner loop
    assert {r["adaptation"] for r in table if r["init"] == "maml"} == {"probe", "finetune", "inner"}
    text = (out / "study.md").read_text()
    assert "## The answer" in text and "maml" in text and "inductive" in text
    assert f"--out {out}" in text and "target.problems=6" in text  # the command that continues it
    assert (out / "study.png").is_file() and any((out / "tensorboard").iterdir())


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
    timeless = [{k: v for k, v in r.items() if k != "seconds_to_final"} for r in rows(lost)]
    lost.write_bytes(before[lost][0])
    assert timeless == [{k: v for k, v in r.items() if k != "seconds_to_final"} for r in rows(lost)]
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
    assert ckpts["random", 3] is None and "trainer.max_time=00:00:04:00" in meta


def test_a_problem_on_which_one_init_diverged_is_left_out_for_every_init():
    from metaft.study.analysis import Study

    def row(init, fp, v):
        return {"init": init, "seed": "0", "ways": "5", "shots": "1", "adaptation": "finetune", "fingerprint": fp,
                "metric": str(v)}

    rows = [row("a", "p1", 50), row("a", "p2", 60), row("a", "p3", 70),
            row("b", "p1", 40), row("b", "p2", float("nan")), row("b", "p3", 90)]
    study = Study(rows, pretrained=["a"], lower_is_better=False, n_boot=100, alpha=0.05, seed=0)
    assert study.excluded == {("5", "1", "finetune"): {"p2"}}
    diff = study.differences(("5", "finetune"))["b"]["1"]["holm"].raw.mean
    assert diff == ((40 - 50) + (90 - 70)) / 2  # p2 dropped for both inits, the rest still paired
