"""metaft.study.problems: inductive batch norm, and batched fine-tuning against a hand-written
per-problem loop with torch.optim.SGD on a deep-copied module (float64)."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metaft.data.episode import Episode
from metaft.study.problems import (
    finetune_problems,
    probe_features,
    probe_problems,
    query_outputs,
)
from metaft.algorithms.probes import linear_logits, prototype_head
from metaft.models.conv4 import Conv4


def _net(seed: int = 0, **kw) -> Conv4:
    torch.manual_seed(seed)
    return Conv4(in_channels=1, image_size=16, filters=4, out_features=3, **kw).double()


def _episode(problems: int = 2, ways: int = 3, shots: int = 2, queries: int = 3, seed: int = 0) -> Episode:
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(problems, ways, 1, 16, 16, generator=g, dtype=torch.float64)
    sy = torch.arange(ways).repeat_interleave(shots).expand(problems, -1).contiguous()
    qy = torch.arange(ways).repeat(queries).expand(problems, -1).contiguous()

    def draw(y):
        x = protos[torch.arange(problems)[:, None], y]
        return x + 0.7 * torch.randn(x.shape, generator=g, dtype=torch.float64)

    return Episode(draw(sy), sy, draw(qy), qy)


@pytest.mark.parametrize("bn", ["inductive", "transductive"])
def test_query_prediction_ignores_other_queries_only_when_inductive(bn):
    net, ep = _net(), _episode(problems=1)
    params = dict(net.named_parameters())
    sx, qx = ep.support_x[0], ep.query_x[0]
    other = qx.clone()
    other[1:] = 3 * torch.randn_like(other[1:]) + 1  # every query but the first replaced
    with torch.no_grad():
        out_s, out_q = query_outputs(net, params, sx, qx, bn)
        _, out_other = query_outputs(net, params, sx, other, bn)
    changed = not torch.allclose(out_q[0], out_other[0], rtol=0, atol=1e-9)
    assert changed == (bn == "transductive")
    torch.testing.assert_close(out_s, net(sx))  # support rows: training-mode batch norm


@pytest.mark.parametrize("bn", ["inductive", "transductive"])
def test_finetuned_prediction_ignores_other_queries_only_when_inductive(bn):
    net, ep = _net(), _episode()
    changed = Episode(ep.support_x, ep.support_y, ep.query_x.clone(), ep.query_y)
    changed.query_x[:, 1:] = 3 * torch.randn_like(changed.query_x[:, 1:])
    a = finetune_problems(net, ep, steps=3, lr=0.1, bn=bn).logits[:, 0]
    b = finetune_problems(net, changed, steps=3, lr=0.1, bn=bn).logits[:, 0]
    assert (not torch.allclose(a, b, rtol=0, atol=1e-9)) == (bn == "transductive")


def _support_stats_copy(m: nn.Module, sx: torch.Tensor) -> nn.Module:
    """An independent route to inductive batch norm: a copy whose batch norms keep running
    statistics with momentum 1 (so they become the support batch's), variance made biased, then
    evaluated in eval mode."""
    e = copy.deepcopy(m)
    for bn in e.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.track_running_stats, bn.momentum = True, 1.0
            bn.register_buffer("running_mean", torch.zeros(bn.num_features, dtype=torch.float64))
            bn.register_buffer("running_var", torch.ones(bn.num_features, dtype=torch.float64))
            bn.register_buffer("num_batches_tracked", torch.tensor(0))
    e.train()
    with torch.no_grad():
        e(sx)
        x = sx  # the values per channel each batch norm saw: batch x height x width, by layer
        for block in e.body[:4]:
            n = x.shape[0] * x.shape[2] * x.shape[3]
            x = block(x)  # (in training mode: sets the same statistics again)
            block[1].running_var.mul_((n - 1) / n)  # PyTorch keeps the unbiased variance
    return e.eval()


def _reference(net: Conv4, ep: Episode, steps: int, every: int, lr: float):
    """Per problem: deep copy, prototype head, torch.optim.SGD on the full support set."""
    accs, logits = [], []
    for i in range(ep.num_tasks):
        sx, sy, qx, qy = ep.support_x[i], ep.support_y[i], ep.query_x[i], ep.query_y[i]
        m = copy.deepcopy(net).train()
        with torch.no_grad():
            feats = m.body(sx)
            mu = torch.stack([feats[sy == c].mean(0) for c in range(3)])
            m.head.weight.copy_(2 * mu)
            m.head.bias.copy_(-(mu * mu).sum(1))
        opt = torch.optim.SGD(m.parameters(), lr=lr)
        curve = []
        for step in range(steps + 1):
            if step % every == 0 or step == steps:
                with torch.no_grad():
                    out = _support_stats_copy(m, sx)(qx)
                curve.append(float((out.argmax(-1) == qy).double().mean() * 100))
            if step < steps:
                opt.zero_grad()
                F.cross_entropy(m(sx), sy).backward()
                opt.step()
        accs.append(curve)
        logits.append(out)
    return torch.tensor(accs, dtype=torch.float64), torch.stack(logits)


@pytest.mark.parametrize("vectorize", ["false", "true"])
def test_finetune_problems_equals_per_problem_sgd_loop(vectorize):
    net, ep = _net(1), _episode(problems=3, seed=1)
    before = copy.deepcopy(net.state_dict())
    curves = finetune_problems(net, ep, steps=7, lr=0.3, eval_every=3, vectorize=vectorize)
    ref_acc, ref_logits = _reference(net, ep, steps=7, every=3, lr=0.3)
    assert curves.steps == [0, 3, 6, 7]
    torch.testing.assert_close(curves.logits, ref_logits, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(curves.acc, ref_acc)
    assert not torch.allclose(curves.logits, _reference(net, ep, steps=6, every=3, lr=0.3)[1])  # it can fail
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # the net is left alone
    assert curves.seconds.shape == curves.acc.shape and (curves.seconds.diff(dim=1) >= 0).all()


def test_probe_features_inductive_and_prototype_probe():
    net, ep = _net(2), _episode(problems=2, seed=2)
    fs, fq = probe_features(net, ep)
    e = _support_stats_copy(net, ep.support_x[1])
    with torch.no_grad():
        torch.testing.assert_close(fq[1], e.body(ep.query_x[1]))
        torch.testing.assert_close(fs[1], net.body(ep.support_x[1]))
    acc = probe_problems(net, ep, head="prototype")
    logits = linear_logits(fq, *prototype_head(fs, ep.support_y, 3))
    torch.testing.assert_close(acc, (logits.argmax(-1) == ep.query_y).double().mean(-1) * 100)
    mu = torch.stack([torch.stack([fs[p][ep.support_y[p] == c].mean(0) for c in range(3)]) for p in range(2)])
    cos = F.cosine_similarity(fq.unsqueeze(2), mu.unsqueeze(1), dim=-1)  # [P, Q, ways], by hand
    torch.testing.assert_close(probe_problems(net, ep, head="cosine_prototype"),
                               (cos.argmax(-1) == ep.query_y).double().mean(-1) * 100)
    for head in ("logistic", "cosine"):
        a = probe_problems(net, ep, head=head)
        assert a.shape == (2,) and ((a >= 0) & (a <= 100)).all()


def test_running_statistics_per_problem_copy():
    """``model.bn=running``: every problem updates its own copy of the running statistics (once
    for the prototype head, once per step) and the queries are read in eval mode, as a deep copy
    trained by torch.optim.SGD does; the net's own buffers stay as they were."""
    net, ep = _net(3, bn="running"), _episode(problems=2, seed=3)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    curves = finetune_problems(net, ep, steps=4, lr=0.2)
    for i in range(ep.num_tasks):
        sx, sy = ep.support_x[i], ep.support_y[i]
        m = copy.deepcopy(net).train()
        with torch.no_grad():
            feats = m.body(sx)
            mu = torch.stack([feats[sy == c].mean(0) for c in range(3)])
            m.head.weight.copy_(2 * mu)
            m.head.bias.copy_(-(mu * mu).sum(1))
        opt = torch.optim.SGD(m.parameters(), lr=0.2)
        for _ in range(4):
            opt.zero_grad()
            F.cross_entropy(m(sx), sy).backward()
            opt.step()
        with torch.no_grad():
            torch.testing.assert_close(curves.logits[i], m.eval()(ep.query_x[i]), rtol=1e-9, atol=1e-9)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


@pytest.mark.parametrize("head_init", ["zero", "keep", "prototypes", "tempered", "lpft"])
def test_vmap_and_loop_agree(head_init):
    """Both of use_vmap's routes give the same numbers, for a Conv4 and an MLP (which ``auto``
    vmaps on a CPU)."""
    from metaft.models.nets import MLP

    net, ep = _net(1), _episode(problems=2, seed=1)
    torch.manual_seed(0)
    mlp = MLP(in_features=4, hidden=(8,), out_features=3).double()
    g = torch.Generator().manual_seed(0)
    sy, qy = torch.arange(3).repeat(2).expand(5, -1), torch.arange(3).repeat(4).expand(5, -1)
    flat = Episode(torch.randn(5, 6, 4, generator=g, dtype=torch.float64), sy.contiguous(),
                   torch.randn(5, 12, 4, generator=g, dtype=torch.float64), qy.contiguous())
    for model, episode in ((net, ep), (mlp, flat)):
        a = finetune_problems(model, episode, steps=3, lr=0.3, eval_every=2, head_init=head_init, vectorize="true")
        b = finetune_problems(model, episode, steps=3, lr=0.3, eval_every=2, head_init=head_init, vectorize="false")
        # lpft's solver stops when the whole batch's gradient is below 1e-10: one problem alone
        # or five together stop at slightly different points.
        tol = 1e-8 if head_init == "lpft" else 1e-10
        torch.testing.assert_close(a.logits, b.logits, rtol=tol, atol=tol)
        torch.testing.assert_close(a.acc, b.acc)
        assert a.steps == [0, 2, 3]


def test_bad_arguments_name_the_setting():
    net, ep = _net(), _episode()
    with pytest.raises(ValueError, match="bn must be"):
        finetune_problems(net, ep, steps=1, lr=0.1, bn="query")
    with pytest.raises(ValueError, match="head_init=keep needs a head of 2 outputs .* the net has 3"):
        finetune_problems(_net(), _episode(ways=2), steps=1, lr=0.1, head_init="keep")
    with pytest.raises(ValueError, match="vectorize=true cannot"):
        finetune_problems(_net(bn="running"), ep, steps=1, lr=0.1, vectorize="true")
    with pytest.raises(ValueError, match="head must be"):
        probe_problems(net, ep, head="svm")


def test_problem_fingerprints_identify_problems():
    from metaft.study.problems import problem_fingerprints

    ep = _episode(problems=3)
    fp = problem_fingerprints(ep)
    assert len(set(fp)) == 3 and all(len(f) == 16 for f in fp)
    assert problem_fingerprints(ep[1]) == [fp[1]]  # a problem's own, whatever batch it is in
    as_float32 = Episode(ep.support_x.float(), ep.support_y, ep.query_x.float(), ep.query_y)
    assert problem_fingerprints(as_float32) == fp
    moved = Episode(ep.support_x, ep.support_y, ep.query_x.clone(), ep.query_y)
    moved.query_x[2, 0, 0, 0, 0] += 1
    assert problem_fingerprints(moved)[:2] == fp[:2] and problem_fingerprints(moved)[2] != fp[2]
