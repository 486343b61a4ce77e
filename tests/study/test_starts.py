"""Full fine-tuning's starts (metaft.study.starts) and its optimisers: every start offered leaves
a 1-shot support loss away from 0 (where the prototype head's is ~0), and fine-tuning with Adam
from the tempered start equals a hand-written per-problem torch.optim.Adam loop (float64)."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from metaft.core.inner_loop import InnerOptimizer
from metaft.models.nets import MLP
from metaft.study.problems import finetune_problems, start_support_loss
from metaft.study.starts import STARTS, tempered_floor
from tests.gaussian_clusters import GaussianClusters
from tests.study.test_batched import _episode, _net, _support_stats_copy


def _spread_mlp(scale: float) -> MLP:
    """An MLP whose features are ``scale`` times a small one's: squared distances between
    1-shot prototypes grow with scale**2, as a trained body's do."""
    torch.manual_seed(0)
    net = MLP(in_features=16, hidden=(32, 32), out_features=5).double()
    with torch.no_grad():
        net.body[2].weight.mul_(scale), net.body[2].bias.mul_(scale)
    return net


def _one_shot(ways: int = 5, shots: int = 1):
    dm = GaussianClusters(ways=ways, shots=shots, queries=3)
    ep = dm.sample("val", 6, torch.Generator().manual_seed(0))
    return type(ep)(ep.support_x.double(), ep.support_y, ep.query_x.double(), ep.query_y)


@pytest.mark.parametrize("shots", [1, 5])
def test_every_start_offered_has_a_support_loss_away_from_zero(shots):
    ep = _one_shot(shots=shots)
    threshold = 0.5  # nats; log 5 = 1.61 is the zero head's, 0.90 the tempered start's floor at 5 ways
    for scale in (1.0, 30.0):
        net = _spread_mlp(scale)
        for head_init in STARTS:
            loss = start_support_loss(net, ep, head_init)
            assert (loss > threshold).all(), (head_init, scale, loss)
            if head_init == "tempered":
                assert loss.mean() >= tempered_floor(5) - 1e-9  # Jensen's bound, whatever the scale
    # The check can fail: the prototype head of spread-out features has a 1-shot support loss ~0.
    if shots == 1:
        assert (start_support_loss(_spread_mlp(30.0), ep, "prototypes") < 1e-3).all()


def test_the_tempered_start_is_the_prototype_head_over_the_mean_absolute_margin():
    net, ep = _net(4), _episode(problems=2, ways=3, shots=2, seed=4)
    curves = finetune_problems(net, ep, steps=0, lr=1.0, head_init="tempered")
    for i in range(ep.num_tasks):
        sx, sy, qx = ep.support_x[i], ep.support_y[i], ep.query_x[i]
        m = copy.deepcopy(net).train()
        with torch.no_grad():
            f = m.body(sx)
            mu = torch.stack([f[sy == c].mean(0) for c in range(3)])
            logits = 2 * f @ mu.T - (mu * mu).sum(1)
            margins = [abs(float(logits[j, sy[j]] - logits[j, c])) for j in range(len(sy)) for c in range(3) if c != sy[j]]
            t = sum(margins) / len(margins)
            m.head.weight.copy_(2 * mu / t)
            m.head.bias.copy_(-(mu * mu).sum(1) / t)
            torch.testing.assert_close(curves.logits[i], _support_stats_copy(m, sx)(qx), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("vectorize", ["false", "true"])
def test_adam_fine_tuning_equals_torch_optim_adam_per_problem(vectorize):
    net, ep = _net(5), _episode(problems=2, ways=3, shots=2, seed=5)
    adam = InnerOptimizer("adam", betas=(0.8, 0.99), setting="adapt.finetune")
    curves = finetune_problems(net, ep, steps=5, lr=0.01, eval_every=2, head_init="zero", vectorize=vectorize,
                               optimizer=adam)
    assert curves.steps == [0, 2, 4, 5]
    for i in range(ep.num_tasks):
        sx, sy, qx = ep.support_x[i], ep.support_y[i], ep.query_x[i]
        m = copy.deepcopy(net).train()
        with torch.no_grad():
            m.head.weight.zero_(), m.head.bias.zero_()
        opt = torch.optim.Adam(m.parameters(), lr=0.01, betas=(0.8, 0.99))
        for _ in range(5):  # the state carries across the evaluation points
            opt.zero_grad()
            F.cross_entropy(m(sx), sy).backward()
            opt.step()
        with torch.no_grad():
            torch.testing.assert_close(curves.logits[i], _support_stats_copy(m, sx)(qx), rtol=1e-8, atol=1e-8)
    sgd = finetune_problems(net, ep, steps=5, lr=0.01, head_init="zero", vectorize=vectorize)
    assert not torch.allclose(sgd.logits, curves.logits)  # the optimiser is used (the test can fail)


def test_an_unknown_start_names_the_setting():
    with pytest.raises(ValueError, match="head_init must be one of prototypes, zero, keep, tempered, lpft"):
        finetune_problems(_net(), _episode(), steps=1, lr=0.1, head_init="cosine")


def test_the_lpft_start_is_a_logistic_regression_on_scale_free_features():
    """Its head minimises mean cross-entropy + |W|^2 / (2 C S) on the support features divided
    by their mean norm (found here by L-BFGS, float64), mapped back to the raw features; so it is
    the same head, up to that scale, for features 30 times as large."""
    ep = _one_shot(ways=3, shots=2)
    for scale in (1.0, 30.0):
        net = _spread_mlp(scale)
        curves = finetune_problems(net, ep, steps=0, lr=1.0, head_init="lpft")
        for i in range(ep.num_tasks):
            sx, sy, qx = ep.support_x[i], ep.support_y[i], ep.query_x[i]
            with torch.no_grad():
                f, fq = net.body(sx), net.body(qx)
            r = f.norm(dim=1).mean()
            w = torch.zeros(3, f.shape[1], dtype=torch.float64, requires_grad=True)
            b = torch.zeros(3, dtype=torch.float64, requires_grad=True)
            opt = torch.optim.LBFGS([w, b], lr=1, max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14,
                                    line_search_fn="strong_wolfe")

            def closure():
                opt.zero_grad()
                loss = F.cross_entropy(f / r @ w.T + b, sy) + 0.5 / (1.0 * len(sy)) * w.pow(2).sum()
                loss.backward()
                return loss

            opt.step(closure)
            with torch.no_grad():
                torch.testing.assert_close(curves.logits[i], fq / r @ w.T + b, rtol=1e-6, atol=1e-6)
