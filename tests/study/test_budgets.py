"""The study's stage-1 budget axis: arms cut to a number of training examples with their schedules
sized to it, a recipe whose schedule is not refused, the convergence criterion and the table of
checkpoints, and the primary pair's difference per budget."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from omegaconf import OmegaConf

from metaft.study import budget_answer, budgets, driver, training
from metaft.study.analysis import Study
from metaft.study.protocol import Primary


@pytest.fixture(scope="module")
def cpu_preset():
    return budgets.expand(driver.load_config("omniglot_cpu"))


def test_a_budget_arm_processes_its_budget_and_its_schedule_ends_there(cpu_preset):
    cfg = cpu_preset
    assert {"maml@150k", "maml@37.5k", "pretrain@150k", "pretrain@37.5k"} <= set(cfg.inits)
    assert "metabaseline@150k" not in cfg.inits  # built on pretrain's checkpoint: converged only
    assert "pretrain@150k" in cfg.pretrained
    for name, budget in (("maml@150k", 150_000), ("pretrain@37.5k", 37_500)):
        arm = budgets.compose_train(budgets.train_overrides(cfg, name))
        full = budgets.compose_train(budgets.train_overrides(cfg, budgets.split(name)[0]))
        b, f = budgets.budget_of(arm), budgets.budget_of(full)
        # Examples per step from the recipe itself: a 20-way 1-shot episode with 5 queries per
        # class for MAML, a batch of 128 images for pre-training.
        assert b["examples_per_step"] == f["examples_per_step"]
        assert abs(b["examples"] - budget) <= b["examples_per_step"] / 2 and b["steps"] < f["steps"]
        # The cosine schedule reaches its end (lr 0) at the arm's last step, not before ...
        start, end = budgets.schedule(arm, at=(0.0, 1.0))
        assert start == 1.0 and end == pytest.approx(0.0, abs=1e-12)
        assert budgets.schedule(arm, at=(0.5,))[0] == pytest.approx(0.5, abs=0.01)
        # ... as the converged recipe's does at its own.
        assert budgets.schedule(full, at=(1.0,))[0] == pytest.approx(0.0, abs=1e-12)


def test_examples_per_step_counts_support_and_query_images():
    cfg = OmegaConf.create({"algorithm": {}, "dataset": {"ways": 5, "train_ways": 20, "shots": 1, "train_shots": None,
                                                         "queries": 5, "meta_batch_size": 2}})
    assert budgets.examples_per_step(cfg) == 2 * 20 * (1 + 5)
    cfg.dataset.train_shots = 10
    assert budgets.examples_per_step(cfg) == 2 * 20 * (10 + 5)
    cfg.algorithm.batch_size = 64
    assert budgets.examples_per_step(cfg) == 64


def test_a_recipe_whose_schedule_is_not_sized_to_its_steps_is_refused():
    # MetaOptNet's CPU recipe drops its lr at a fixed step (5,625): cut to 150k images it never would.
    cfg = driver.load_config("omniglot", ["stage1.budget_inits=[metaoptnet]", "stage1.budgets=[150000]"])
    with pytest.raises(ValueError, match=r"metaoptnet's learning-rate schedule is not sized to trainer.max_steps"):
        budgets.expand(cfg)
    with pytest.raises(ValueError, match="not trained inits"):
        budgets.expand(driver.load_config("omniglot", ["stage1.budget_inits=[random]"]))


def test_budget_labels_round_trip():
    assert [budgets.label(b) for b in (150_000, 37_500, 1_500_000, 999)] == ["150k", "37.5k", "1.5M", "999"]
    assert budgets.budget_value("37.5k") == 37_500 and budgets.split("maml@150k") == ("maml", "150k")
    names = ["maml", "pretrain", "maml@37.5k", "pretrain@37.5k", "maml@150k", "pretrain@150k", "maml@1k"]
    assert [b for b, _, _ in budgets.pairs(names, "maml", "pretrain")] == [budgets.FULL, "150k", "37.5k"]


def test_the_convergence_criterion():
    ok = [(4000, 98.0, 0.3, 1000), (5000, 98.2, 0.3, 1000)]
    assert training.criterion(ok, 1000, budget_arm=False)[0]
    moved = [(4000, 97.0, 0.3, 1000), (5000, 98.2, 0.3, 1000)]
    assert not training.criterion(moved, 1000, budget_arm=False)[0]
    few = [(4000, 98.0, 0.8, 100), (5000, 98.2, 0.8, 100)]
    assert "fewer than 1000" in training.criterion(few, 1000, budget_arm=False)[1]
    assert not training.criterion(ok[-1:], 1000, budget_arm=False)[0]
    assert not training.criterion(ok, 1000, budget_arm=True)[0]
    no_interval = [(4000, 98.0, math.nan, 1000), (5000, 98.2, math.nan, 1000)]
    assert not training.criterion(no_interval, 1000, budget_arm=False)[0]  # a missing interval is no pass


def _fake_run(run, steps, per_step_cfg, history, threads=1):
    """A stage-1 run directory as train.py leaves it: its config, checkpoint and TensorBoard scalars."""
    from torch.utils.tensorboard import SummaryWriter

    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"trainer": {"max_steps": steps}, **per_step_cfg}), run / ".hydra" / "config.yaml")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "best.ckpt").write_text("")
    (run / training.LAUNCH).write_text(json.dumps({"threads": threads}))
    with SummaryWriter(str(run / "tensorboard")) as w:
        for step, acc, ci, n in history:
            w.add_scalar("val/acc", acc, step)
            w.add_scalar("val/acc_ci95", ci, step)
            w.add_scalar("val/episodes", n, step)
    return run / "checkpoints" / "best.ckpt"


def test_the_table_of_stage_one_checkpoints_reads_each_run(tmp_path):
    episodic = {"algorithm": {}, "dataset": {"ways": 5, "shots": 1, "queries": 5, "meta_batch_size": 4}}
    ckpts = {("maml", 0): _fake_run(tmp_path / "a", 100, episodic, [(50, 90.0, 1.0, 1000), (100, 90.5, 1.0, 1000)]),
             ("maml", 1): _fake_run(tmp_path / "b", 100, episodic, [(50, 80.0, 1.0, 1000), (100, 90.0, 1.0, 1000)]),
             ("maml@1k", 0): _fake_run(tmp_path / "c", 10, episodic, [(10, 70.0, 2.0, 1000)]),
             ("random", 0): None}
    training.record(tmp_path, ckpts)
    assert training.load(tmp_path) == ckpts
    lines, status, examples = training.table(tmp_path, episodes=1000)
    text = "\n".join(lines)
    assert status == {"maml": False, "maml@1k": False}  # seed 1 moved 10 points between its last two
    assert examples["maml"] == 100 * 4 * 5 * 6 and examples["maml@1k"] == 10 * 4 * 5 * 6
    assert "| maml | 0 | 100 | 12,000 |" in text and "yes: steps 50 and 100" in text
    assert "NO: last two validations (steps 50, 100) differ by 10.00" in text and "budget arm" in text


def test_an_init_built_on_anothers_checkpoint_counts_both_stages(tmp_path):
    episodic = {"algorithm": {}, "dataset": {"ways": 5, "shots": 1, "queries": 5, "meta_batch_size": 1}}
    batch = {"algorithm": {"batch_size": 10}, "dataset": {}}
    history = [(50, 90.0, 1.0, 1000), (100, 90.5, 1.0, 1000)]
    ckpts = {("pretrain", 0): _fake_run(tmp_path / "p", 100, batch, history),
             ("metabaseline", 0): _fake_run(tmp_path / "m", 100, episodic, history)}
    training.record(tmp_path, ckpts)
    cfg = OmegaConf.create({"inits": {"pretrain": "pretrain", "metabaseline": "mb"},
                            "variants": {"mb": ["metabaseline", "algorithm.init_ckpt=CKPT(pretrain)"]}})
    _, _, examples = training.table(tmp_path, 1000, cfg)
    assert examples == {"pretrain": 100 * 10, "metabaseline": 100 * 5 * 6 + 100 * 10}
    assert training.table(tmp_path, 1000)[2]["metabaseline"] == 100 * 5 * 6  # without the study: this stage only


def _rows(diff_by_budget: dict[str, float], shots=("1", "5"), seeds=(0, 1, 2), problems=40):
    rng = np.random.default_rng(0)
    rows = []
    effects = rng.normal(0, 5, problems)
    for budget, diff in diff_by_budget.items():
        suffix = "" if budget == budgets.FULL else f"@{budget}"
        for seed in seeds:
            for k in shots:
                for p in range(problems):
                    base = 80 + effects[p] + rng.normal(0, 1)
                    for init, value in ((f"pretrain{suffix}", base), (f"maml{suffix}", base + diff + rng.normal(0, 1))):
                        rows.append({"init": init, "seed": str(seed), "ways": "5", "shots": k, "adaptation": "probe",
                                     "problem": str(p), "fingerprint": f"{k}-{p}", "metric": str(value)})
    return rows


def test_the_primary_pair_is_compared_at_each_budget_it_was_trained_to(tmp_path):
    rows = _rows({budgets.FULL: 2.0, "150k": 5.0, "37.5k": -1.0})
    primary = Primary("maml", "pretrain", (("5", "probe", "1"), ("5", "probe", "5")))
    study = Study(rows, "pretrain", primary, lower_is_better=False, alpha=0.05)
    found = budget_answer.rows(study, {})[("5", "probe")]
    assert [b for b, *_ in found] == [budgets.FULL, "150k", "37.5k"]
    for (b, m, p, per_k), want in zip(found, (2.0, 5.0, -1.0)):
        assert (m, p) == ((f"maml@{b}", f"pretrain@{b}") if b != budgets.FULL else ("maml", "pretrain"))
        for k in ("1", "5"):
            assert per_k[k].mean == pytest.approx(want, abs=0.3) and per_k[k].lo < want < per_k[k].hi
    examples = {"maml": 6e5, "pretrain": 6.4e5, "maml@150k": 1.5e5, "pretrain@150k": 1.5e5, "maml@37.5k": 3.75e4,
                "pretrain@37.5k": 3.75e4}
    text = "\n".join(budget_answer.markdown(study, examples))
    assert "| 150k | 150,000 / 150,000 |" in text and "| full recipe | 600,000 / 640,000 |" in text
    assert [p.name for p in budget_answer.plot(tmp_path, study, examples, "acc")] == ["study_budget_5way.png"]
    assert not math.isnan(found[0][3]["1"].lo)


def test_steps_to_the_pre_trained_arms_final_metric_with_censoring_and_the_metric_after_fixed_steps():
    from metaft.study import speed
    from metaft.study.analysis import format_curve

    steps = [0, 10, 20, 50]
    rows = []
    # Pre-training reaches 80 at step 50 on every problem; MAML reaches it at step 10 on the first
    # three problems and never on the fourth (censored at 50).
    for seed in ("0", "1"):
        for p in range(4):
            pre = [40.0 + p, 60.0, 70.0, 80.0 + (p % 2) - 0.5]
            meta = [50.0 + p, 80.0, 85.0, 90.0] if p < 3 else [50.0, 60.0, 65.0, 70.0]
            for init, curve in (("pretrain", pre), ("maml", meta)):
                rows.append({"init": init, "seed": seed, "ways": "5", "shots": "1", "adaptation": "finetune",
                             "problem": str(p), "fingerprint": f"f{p}", "metric": str(curve[-1]),
                             "curve": format_curve(steps, curve), "seconds_per_step": "0.01"})
    primary = Primary("maml", "pretrain", (("5", "finetune", "1"),))
    study = Study(rows, "pretrain", primary, lower_is_better=False, alpha=0.05)
    assert speed.to_target(steps, [1.0, 2.0, 3.0, 4.0], 2.5, lower=False) == (20.0, False)
    assert speed.to_target(steps, [1.0, 2.0, 3.0, 4.0], 5.0, lower=False) == (50.0, True)
    assert speed.to_target(steps, [4.0, 3.0, 2.0, 1.0], 2.5, lower=True) == (20.0, False)
    text = "\n".join(speed.table(study, "acc"))
    # Target: pre-training's mean final accuracy (80.0); pre-training's odd problems (80.5) reach
    # it at 50, its even ones (79.5) never (censored at 50 too): steps meta - pre = (10 - 50) x 3, 0.
    assert "| full recipe | 5-way | 1 | 80.00 | 2 / 4 of 8 (limit 50) | -30.0 [" in text
    # After 0 steps: meta - pre = 10 on every problem but the last (50 - 40 - p... = 10 - 3 = 7).
    row = next(line for line in text.splitlines() if line.startswith("| full recipe"))
    after0 = row.split("|")[8].strip()
    assert after0.startswith("+9.25 [")  # (10 + 10 + 10 + 7) / 4
    assert row.split("|")[-2].strip() == "-"  # no curve reaches 200 steps


def test_a_budget_arm_is_trained_adapted_and_reported_end_to_end(tmp_path):
    """A toy sinusoid study whose stage 1 really trains MAML at its recipe (40 steps of 25 tasks of
    10 + 10 points: 20,000 examples) and at a 5,000-example budget (10 steps), then adapts both."""
    from tests.study.test_driver import TOY, rows

    toy = [o for o in TOY if not o.startswith(("stage1.seeds", "inits", "pretrained", "primary"))]
    overrides = ["dataset=sinusoid", "model=mlp", "algorithm.inner_steps=1", "trainer.max_steps=40",
                 "trainer.val_check_interval=20", "checkpoint.every_n_train_steps=20", "dataset.val_episodes=50",
                 "test=false", "progress=log"]
    out = tmp_path / "study"
    assert driver.main(["sinusoid", *toy, "stage1.seeds=[0]", "inits={random: null, maml: maml}", "pretrained=[random]",
                        "primary.pretrained=random", "controls=null", f"stage1.overrides=[{','.join(overrides)}]",
                        "stage1.budgets=[5000]", "stage1.budget_inits=[maml]", "stage1.converged={val_episodes: 50}",
                        "--out", str(out)]) == 0
    assert (out / "stage1" / "maml@5k_seed0" / "checkpoints").is_dir()
    table = rows(out / "study.csv")
    assert {"random", "maml", "maml@5k"} <= {r["init"] for r in table}
    text = (out / "study.md").read_text()
    assert "| maml@5k | 0 | 10 | 5,000 | " in text and "| maml | 0 | 40 | 20,000 | " in text
    assert "maml@5k (budget arm)" in text
