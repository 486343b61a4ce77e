"""The MAML paper's Figure 3 control on a toy sinusoid study: its MSEs are those of a hand-written
SGD loop on the same function, its verdict follows the numbers, and a misnamed control is
refused before anything runs."""
from __future__ import annotations

import copy
import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from metaft.core.objective import Objective
from metaft.study import controls, driver, evaluate, targets
from metaft.study.problems import problem_fingerprints
from tests.study.test_driver import TOY, maml_ckpts

# Toy sizes: K=5 is the toy study's largest K; the random init stands in for the pretrained one.
CONTROL = ["controls={maml_figure3: {meta: maml, pretrained: random, shots: 5, lr: 0.01, meta_steps: 1, "
           "pretrained_steps: 10}}"]


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("controls")
    ckpts = maml_ckpts(tmp)
    out = tmp / "study"
    assert driver.main(["sinusoid", *TOY, *CONTROL, "--out", str(out), "--ckpt", ckpts]) == 0
    return out, ckpts


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write(path: Path, rows: list[dict[str, str]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _hand_sgd(net: torch.nn.Module, sx, sy, qx, qy, lr: float, steps: int) -> list[float]:
    """Test MSE after 0..steps plain SGD steps on the support MSE, with torch.optim."""
    net = copy.deepcopy(net).train()
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    out = []
    for step in range(steps + 1):
        with torch.no_grad():
            out.append(float((net(qx) - qy).pow(2).mean()))
        if step < steps:
            opt.zero_grad()
            torch.nn.functional.mse_loss(net(sx), sy).backward()
            opt.step()
    return out


def test_the_control_is_a_plain_sgd_loop_on_the_studys_test_functions(study):
    out, ckpts = study
    cfg = OmegaConf.load(out / driver.CONFIG)
    rows = _rows(out / "controls" / "maml_figure3.csv")
    assert {(r["init"], r["seed"]) for r in rows} == {(i, s) for i in ("maml", "random") for s in ("0", "1")}
    assert len(rows) == 4 * int(cfg.target.problems)  # every test function, each init and seed
    objective = Objective("regression")
    test, _ = targets.Problems(cfg, None, 1, True).at(5)
    # The study's own K=5 test functions (the fine-tuning rows score the first of them).
    study_rows = _rows(out / "study.csv")
    assert {r["fingerprint"] for r in rows} >= {r["fingerprint"] for r in study_rows
                                                 if r["shots"] == "5" and r["adaptation"] == "finetune"}
    paths = dict(zip((0, 1), ckpts.split("=", 1)[1].split(",")))
    checked = 0
    for init, seed, ckpt in (("maml", 1, Path(paths[1])), ("random", 0, None)):
        net = evaluate.Init(init, seed, ckpt, cfg, objective).net
        for problem in (0, 5):
            ep = test[problem // int(cfg.target.chunk)][problem % int(cfg.target.chunk):][:1]
            row = next(r for r in rows if (r["init"], r["seed"], r["problem"]) == (init, str(seed), str(problem)))
            assert row["fingerprint"] == problem_fingerprints(ep)[0]
            mse = _hand_sgd(net, ep.support_x[0], ep.support_y[0], ep.query_x[0], ep.query_y[0], 0.01, 10)
            assert [float(row[f"mse_{s}"]) for s in (0, 1, 10)] == pytest.approx([mse[0], mse[1], mse[10]], rel=1e-4)
            assert mse[1] != pytest.approx(mse[0], rel=1e-6)  # the steps moved the model
            checked += 1
    assert checked == 4
    assert "## Controls" in (out / "study.md").read_text()


def test_the_verdict_follows_the_numbers(study):
    out, ckpts = study
    path = out / "controls" / "maml_figure3.csv"
    original = _rows(path)
    pretrained_10 = {(r["seed"], r["fingerprint"]): float(r["mse_10"]) for r in original if r["init"] == "random"}
    rng = np.random.default_rng(0)
    try:
        for shift, word in ((-0.5, "**reproduced**"), (+0.5, "**NOT reproduced**")):
            changed = [dict(r) for r in original]
            for r in changed:  # maml after 1 step: the pretrained model after 10, moved by `shift`
                if r["init"] == "maml":
                    r["mse_1"] = repr(pretrained_10[r["seed"], r["fingerprint"]] + shift + 0.05 * rng.standard_normal())
            _write(path, changed)
            text = driver.report(out)
            section = text[text.index("## Controls"):]
            assert word in section and section.count("reproduced**") == 1
            line = next(x for x in section.splitlines() if "(paired, the same functions): " in x)
            mean = float(line.split("(paired, the same functions): ")[1].split(" [")[0])
            assert mean == pytest.approx(shift, abs=0.05)  # the paired difference's sign and size
    finally:
        _write(path, original)
    # A continued study with the same settings keeps the control's rows.
    before = path.stat().st_mtime_ns
    assert driver.main(["sinusoid", *TOY, *CONTROL, "--out", str(out), "--ckpt", ckpts]) == 0
    assert path.stat().st_mtime_ns == before


def test_the_verdict_needs_the_whole_interval_below_zero():
    rng = np.random.default_rng(1)
    below = -1.0 + 0.1 * rng.standard_normal((3, 50))
    assert controls.verdict(below)[1] and not controls.verdict(-below)[1]
    ci, ok = controls.verdict(0.1 * rng.standard_normal((3, 50)))  # no difference: not reproduced
    assert ci.lo < 0 < ci.hi and not ok


@pytest.mark.parametrize("bad, message", [
    ("controls.maml_figure3.meta=nosuch", "controls.maml_figure3.meta='nosuch' is not an init"),
    ("controls.maml_figure3.pretrained=pretrain", "or leave the control out with controls=null"),
    ("controls.maml_figure3.shots=7", "controls.maml_figure3.shots=7 must be one of target.shots"),
    ("controls.maml_figure3.lr=0", "controls.maml_figure3.lr must be a step size > 0"),
])
def test_a_control_that_does_not_fit_the_study_is_refused_before_anything_runs(tmp_path, capsys, bad, message):
    out = tmp_path / "study"
    assert driver.main(["sinusoid", *TOY, *CONTROL, bad, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
