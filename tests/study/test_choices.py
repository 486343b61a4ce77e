"""Settings chosen on validation problems (metaft.study.choices): full fine-tuning's grid and the
learners' test-time step size and count, once per init for all its seeds, never on the test
problems; and the presets' grids as the protocol states them."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from metaft.core.objective import Objective
from metaft.data import SinusoidDataModule
from metaft.data.episodic import split_generator
from metaft.models import MLP
from metaft.study import choices
from metaft.study.driver import load_config, main
from metaft.study.evaluate import Init
from metaft.study.problems import finetune_problems, problem_fingerprints, start_support_loss
from tests.finetune.conftest import MLP_CFG, save_ckpt
from tests.gaussian_clusters import GaussianClusters
from tests.study.test_driver import TOY, maml_ckpts, rows

REGRESSION = Objective("regression")


def _cfg(**finetune) -> OmegaConf:
    ft = {"starts": ["zero", "tempered"], "optimizers": {"sgd": [0.01, 1.0], "adam": [0.001, 0.1]},
          "max_steps": 4, "eval_every": 2, **finetune}
    return OmegaConf.create({"adapt": {"bn": "inductive", "finetune": ft, "probe": {"head": "logistic", "C": 1.0},
                                       "inner_grid": {"lr_scales": [0.1, 10.0], "max_steps": 3}}})


def test_full_fine_tuning_is_chosen_once_for_all_seeds_of_an_init():
    dm = GaussianClusters(ways=3, shots=1, queries=4)
    val = [dm.sample("val", 5, torch.Generator().manual_seed(s)) for s in (0, 1)]
    nets = []
    for seed in (2, 3):  # two stage-1 seeds of one init (which alone would choose differently)
        torch.manual_seed(seed)
        nets.append(MLP(in_features=dm.in_features, hidden=(16,), out_features=3))
    inits = [SimpleNamespace(net=n) for n in nets]
    cfg = _cfg()
    chosen = choices.choose_finetune(inits, val, cfg, Objective("classification"))
    # By hand: every grid point's mean accuracy over both seeds' validation problems, per step.
    best = None
    for opt, lrs in (("sgd", [0.01, 1.0]), ("adam", [0.001, 0.1])):  # in the grid's order: ties go to the first
        for start in ("zero", "tempered"):
            for lr in lrs:
                acc = torch.cat([finetune_problems(n, ep, 4, lr, 2, head_init=start, optimizer=choices.optimizer(opt)).acc
                                 for n in nets for ep in val]).double()
                for j, step in enumerate((0, 2, 4)):
                    if best is None or float(acc[:, j].mean()) > best[0]:
                        best = (float(acc[:, j].mean()), start, opt, lr, step)
    assert (chosen.score, chosen.start, chosen.optimizer, chosen.lr, chosen.step) == pytest.approx(best)
    # Not per checkpoint: one seed alone would choose otherwise here (the test can fail).
    alone = [choices.choose_finetune([i], val, cfg, Objective("classification")) for i in inits]
    assert any((a.start, a.optimizer, a.lr, a.step) != (chosen.start, chosen.optimizer, chosen.lr, chosen.step)
               for a in alone)


def _sinusoid_init(tmp_path: Path, seed: int) -> Init:
    torch.manual_seed(seed)
    ckpt = save_ckpt(tmp_path / f"maml{seed}.ckpt", MLP(), MLP_CFG, dataset={"_target_": "metaft.data.SinusoidDataModule"})
    cfg = OmegaConf.create({"adapt": {"bn": "inductive"}, "random_model": MLP_CFG})
    return Init("maml", seed, ckpt, cfg, REGRESSION)


def test_the_learners_step_size_and_count_are_chosen_against_a_hand_written_sgd_loop(tmp_path):
    inits = [_sinusoid_init(tmp_path, s) for s in (0, 1)]
    dm = SinusoidDataModule(shots=5, queries=10)
    val = [dm.sample("val", 3, split_generator(0, "val", i)) for i in range(2)]
    chosen = choices.choose_inner(inits, val, _cfg(), REGRESSION)
    base, own = inits[0].learner.eval_inner_lr, inits[0].learner.eval_inner_steps
    mse = {}  # (scale, steps) -> mean query MSE over both seeds' problems, by torch.optim.SGD
    for scale in (1.0, 0.1, 10.0):
        curves = []
        for init in inits:
            for ep in val:
                for i in range(ep.num_tasks):
                    m = copy.deepcopy(init.net).train()
                    opt = torch.optim.SGD(m.parameters(), lr=base * scale)
                    curve = []
                    for step in range(4):
                        with torch.no_grad():
                            curve.append(float(F.mse_loss(m(ep.query_x[i]), ep.query_y[i])))
                        opt.zero_grad()
                        F.mse_loss(m(ep.support_x[i]), ep.support_y[i]).backward()
                        opt.step()
                    curves.append(curve)
        mean = torch.tensor(curves, dtype=torch.float64).mean(0)
        mse.update({(scale, j): float(mean[j]) for j in range(4)})
    best = min(mse, key=lambda k: (mse[k], k != (1.0, own)))
    assert (chosen.lr_scale, chosen.steps) == best and chosen.score == pytest.approx(mse[best], rel=1e-5)
    assert inits[0].learner.eval_inner_lr == base  # the learner is left as it was


def test_settings_are_chosen_on_validation_problems_never_the_test_ones(tmp_path, monkeypatch):
    """The driver hands the choosers problems none of which is scored: were the test problems
    passed (or mixed in), their fingerprints would be in study.csv and this would fail."""
    seen: dict[str, set] = {"finetune": set(), "inner": set()}
    real = {"finetune": choices.choose_finetune, "inner": choices.choose_inner}

    def spy(kind):
        def choose(inits, val, cfg, objective):
            seen[kind] |= {fp for ep in val for fp in problem_fingerprints(ep)}
            return real[kind](inits, val, cfg, objective)
        return choose

    monkeypatch.setattr(choices, "choose_finetune", spy("finetune"))
    monkeypatch.setattr(choices, "choose_inner", spy("inner"))
    out = tmp_path / "study"
    assert main(["sinusoid", *TOY, "adapt.inner_grid.max_steps=2", "--out", str(out),
                 "--ckpt", maml_ckpts(tmp_path)]) == 0
    table = rows(out / "study.csv")
    scored = {r["fingerprint"] for r in table}
    assert seen["finetune"] and seen["inner"] and scored.isdisjoint(seen["finetune"] | seen["inner"])
    for k in ("2", "5"):  # one choice per (init, K), shared by both seeds, saved beside the rows
        ft = json.loads((out / "rows" / f"NNone_K{k}" / "maml_finetune_choice.json").read_text())
        picked = {(r["chosen_start"], r["chosen_optimizer"], float(r["chosen_lr"]), int(r["chosen_step"]))
                  for r in table if r["shots"] == k and r["init"] == "maml" and r["adaptation"] == "finetune"}
        assert picked == {(ft["start"], ft["optimizer"], ft["lr"], ft["step"])}
        inner = {(r["chosen_step"], r["chosen_lr"]) for r in table
                 if r["shots"] == k and r["adaptation"] == "inner"}
        assert len(inner) == 1 and next(iter(inner))[0] != ""
    text = (out / "study.md").read_text()  # ft: K=5's choice
    assert "## Settings chosen on validation problems" in text
    assert f"| regression | finetune | maml | 5 | {ft['start']}, {ft['optimizer']} {ft['lr']:g}, {ft['step']} steps |" in text


def test_grid_settings_are_checked_naming_the_setting():
    with pytest.raises(ValueError, match="adapt.finetune.optimizers: 'rmsprop' is not an inner optimiser"):
        choices.grid(_cfg(optimizers={"rmsprop": [0.1]}))
    with pytest.raises(ValueError, match=r"adapt.finetune.optimizers.sgd must list step sizes > 0"):
        choices.grid(_cfg(optimizers={"sgd": [0.1, -1]}))
    with pytest.raises(ValueError, match="adapt.finetune.starts must be one of"):
        choices.grid(_cfg(starts=["cosine"]))
    bad = _cfg()
    bad.adapt.inner_grid.lr_scales = [0.0]
    with pytest.raises(ValueError, match="adapt.inner_grid must give lr_scales"):
        choices.check(bad)
    with pytest.raises(ValueError, match="adapt.finetune.augment must be null or one of"):
        choices.check(_cfg(augment="mixup"))
    bad = _cfg()
    bad.adapt.probe.C = [1.0, 0.0]
    with pytest.raises(ValueError, match=r"adapt.probe.C must be a number > 0 or a list of them"):
        choices.check(bad)


def test_the_probes_regularisation_is_chosen_on_validation_problems_for_all_seeds():
    from metaft.core.objective import Objective
    from metaft.study import evaluate

    dm = GaussianClusters(ways=3, shots=2, queries=6)
    val = [dm.sample("val", 6, torch.Generator().manual_seed(s)) for s in (0, 1)]
    inits = []
    for seed in (2, 3):
        torch.manual_seed(seed)
        inits.append(SimpleNamespace(net=MLP(in_features=dm.in_features, hidden=(16,), out_features=3)))
    cfg, objective = _cfg(), Objective("classification")
    cfg.adapt.probe.C = [1e-4, 1.0, 100.0]
    chosen = choices.choose_probe(inits, val, cfg, objective)
    # The mean validation accuracy over both seeds' problems, by each C, computed here.
    means = {C: np.concatenate([evaluate.probe(i, ep, cfg, objective, C) for i in inits for ep in val]).mean()
             for C in cfg.adapt.probe.C}
    assert chosen.value == max(means, key=lambda C: (means[C], -list(means).index(C)))
    assert chosen.score == pytest.approx(means[chosen.value])
    cfg.adapt.probe.C = 0.5  # a single value: taken as it is, nothing scored
    assert choices.choose_probe(inits, val, cfg, objective) == choices.Probe(0.5)


def test_a_bad_grid_is_refused_before_anything_runs(tmp_path, capsys):
    out = tmp_path / "study"
    assert main(["sinusoid", *TOY, "adapt.finetune.optimizers={sgd: [0.1], lbfgs: [1]}", "--out", str(out)]) == 2
    assert "'lbfgs' is not an inner optimiser" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("name", ["omniglot", "omniglot_cpu", "sinusoid"])
def test_the_presets_grids_are_the_protocols(name):
    """Two optimisers, each over at least three decades of step size; classification offers at
    least two starts, each with a 1-shot support loss away from 0; K in {1, 5, all} fine-tuned."""
    cfg = load_config(name)
    points = choices.grid(cfg)
    for opt in ("sgd", "adam"):
        lrs = [p.lr for p in points if p.optimizer == opt]
        assert max(lrs) / min(lrs) >= 1000 - 1e-9, (opt, lrs)
    starts = {p.start for p in points}
    if name == "sinusoid":
        assert starts == {"keep"}
        return
    assert len(starts) >= 2 and "prototypes" not in starts
    dm = GaussianClusters(ways=5, shots=1, queries=2)
    ep = dm.sample("val", 4, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    net = MLP(in_features=dm.in_features, hidden=(32,), out_features=5)
    assert all((start_support_loss(net, ep, s) > 0.5).all() for s in starts)
    shots = cfg.adapt.finetune.shots
    assert shots is None or {"1", "5", "all"} <= {str(k) for k in shots}
