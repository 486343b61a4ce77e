"""metaft.algorithms.probes against scikit-learn, float64 optimality conditions and hand computations."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from metaft.models.heads import CosineClassifier, cosine_logits
from metaft.algorithms.probes import (
    fit_cosine_head,
    linear_logits,
    logistic_regression,
    probe_logits,
    prototype_head,
)


def _problems(n_prob: int, ways: int, shots: int, queries: int, dim: int, seed: int = 0):
    """Gaussian class clusters per problem: support/query features and labels, float64."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(n_prob, ways, dim, generator=g, dtype=torch.float64)
    sy = torch.arange(ways).repeat_interleave(shots).expand(n_prob, -1)
    qy = torch.arange(ways).repeat_interleave(queries).expand(n_prob, -1)
    fs = centers.gather(1, sy.unsqueeze(-1).expand(-1, -1, dim)) + torch.randn(n_prob, ways * shots, dim, generator=g, dtype=torch.float64)
    fq = centers.gather(1, qy.unsqueeze(-1).expand(-1, -1, dim)) + torch.randn(n_prob, ways * queries, dim, generator=g, dtype=torch.float64)
    return fs, sy.contiguous(), fq, qy.contiguous()


def test_prototype_head_is_nearest_class_mean():
    fs, sy, fq, _ = _problems(3, 4, 2, 3, 5)
    w, b = prototype_head(fs, sy, 4)
    mu = torch.stack([torch.stack([fs[p][sy[p] == c].mean(0) for c in range(4)]) for p in range(3)])
    sq_dist = ((fq.unsqueeze(2) - mu.unsqueeze(1)) ** 2).sum(-1)  # [P, Q, ways]
    # logits = -|q - mu|^2 + |q|^2: the same ranking and softmax as minus the squared distance
    torch.testing.assert_close(linear_logits(fq, w, b), -sq_dist + fq.pow(2).sum(-1, keepdim=True))


@pytest.mark.parametrize("dim,shots,C,intercept", [(6, 5, 1.0, True), (6, 5, 10.0, False), (30, 2, 1.0, True)])
def test_logistic_regression_matches_sklearn(dim, shots, C, intercept):
    sklearn = pytest.importorskip("sklearn.linear_model")
    ways = 4
    fs, sy, fq, _ = _problems(3, ways, shots, 5, dim, seed=dim + shots)
    w, b = logistic_regression(fs, sy, ways, C=C, fit_intercept=intercept)  # dim 30 > 8 examples: the span route
    probs = torch.softmax(probe_logits(fq, w, b), -1)
    for p in range(fs.shape[0]):
        ref = sklearn.LogisticRegression(C=C, fit_intercept=intercept, solver="lbfgs", tol=1e-12, max_iter=100_000)
        ref.fit(F.normalize(fs[p], dim=-1).numpy(), sy[p].numpy())
        np.testing.assert_allclose(probs[p].numpy(), ref.predict_proba(F.normalize(fq[p], dim=-1).numpy()), atol=1e-4)


@pytest.mark.parametrize("ways,shots,dim,C,seed", [(5, 3, 12, 2.0, 7), (4, 5, 6, 1.1, 11)])
def test_logistic_regression_stationary_float64(ways, shots, dim, C, seed):
    """The gradient of C * sum CE + |W|^2 / 2 vanishes at the solution (by autograd, float64),
    also for problems that converge at different Newton steps (the second case once gave NaN
    after its first problems had converged)."""
    fs, sy, _, _ = _problems(3, ways, shots, 1, dim, seed=seed)
    w, b = logistic_regression(fs, sy, ways, C=C)
    w, b = w.clone().requires_grad_(), b.clone().requires_grad_()
    x = F.normalize(fs, dim=-1)
    obj = C * F.cross_entropy(linear_logits(x, w, b).flatten(0, 1), sy.flatten(), reduction="sum") + 0.5 * w.pow(2).sum()
    gw, gb = torch.autograd.grad(obj, (w, b))
    assert gw.abs().max() < 1e-8 and gb.abs().max() < 1e-8
    assert abs(float(b.sum(-1).abs().max())) < 1e-12  # the intercept's free constant is fixed at mean 0


def test_logistic_regression_refuses_bad_labels():
    fs, sy, _, _ = _problems(1, 3, 2, 1, 4)
    with pytest.raises(ValueError, match="every class"):
        logistic_regression(fs, sy.clamp_max(1), 3)
    with pytest.raises(ValueError, match=r"\[problems, S, D\]"):
        logistic_regression(fs[0], sy[0], 3)


def test_cosine_logits_by_hand():
    f = torch.tensor([[3.0, 4.0], [1.0, 0.0]], dtype=torch.float64)  # norms 5 and 1
    w = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]], dtype=torch.float64)
    r = 1 / math.sqrt(2)
    expected = 2.5 * torch.tensor([[3 / 5, 4 / 5, -7 / 5 * r], [1.0, 0.0, -r]], dtype=torch.float64)
    torch.testing.assert_close(cosine_logits(f, w, 2.5), expected)
    head = CosineClassifier(2, 3, scale=2.5).double()
    with torch.no_grad():
        head.weight.copy_(w)
    torch.testing.assert_close(head(f), expected)
    assert head.scale.requires_grad


def test_fit_cosine_head_equals_plain_gradient_descent():
    fs, sy, _, _ = _problems(2, 3, 2, 1, 5, seed=3)
    got = fit_cosine_head(fs, sy, 3, scale=5.0, steps=4, lr=0.5)
    for p in range(2):  # one problem at a time, torch.optim.SGD on the same start
        start = F.normalize(torch.stack([fs[p][sy[p] == c].sum(0) for c in range(3)]), dim=-1)
        weight = start.clone().requires_grad_()
        opt = torch.optim.SGD([weight], lr=0.5)
        for _ in range(4):
            opt.zero_grad()
            F.cross_entropy(cosine_logits(fs[p], weight, 5.0), sy[p]).backward()
            opt.step()
        torch.testing.assert_close(got[p], weight.detach())
