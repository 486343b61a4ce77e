"""ProtoNet, MetaOptNet (ridge, SVM) and supervised pre-training checked against float64
references that share no code with them: hand-written loops, the primal closed form, scipy on
the primal SVM, KKT conditions, and finite differences. Their cosine variants (Baseline++,
Meta-Baseline) join the checks shared by all (``LEARNERS``); their own are in test_baselines.py."""
from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import minimize

from metaft.algorithms import MetaOptNet, Pretrain, ProtoNet
from metaft.algorithms.metaoptnet import svm_cs_dual
from metaft.data import Episode, split_generator
from metaft.models import MLP
from tests.gaussian_clusters import GaussianClusters
from tests.unit.test_gradients import finite_difference

WAYS, SHOTS, QUERIES = 3, 2, 4


@pytest.fixture
def episode() -> Episode:
    """3 tasks, 3-way 2-shot, 4 queries per class; float64 inputs, integer labels."""
    dm = GaussianClusters(ways=WAYS, shots=SHOTS, queries=QUERIES, signal_dims=3, noise_dims=3, noise=1.0)
    ep = dm.sample("train", 3, split_generator(0, "train"))
    return Episode(ep.support_x.double(), ep.support_y, ep.query_x.double(), ep.query_y)


def make(cls, vectorize: str = "true", **kw):
    torch.manual_seed(0)
    net = MLP(6, (5, 4), WAYS)  # 4 features < 6 support examples: a singular Gram matrix
    return cls(net=net, task="classification", vectorize=vectorize, optimizer=partial(torch.optim.SGD, lr=0.1), **kw).double()


def features_by_hand(p: dict, x: torch.Tensor) -> torch.Tensor:
    h = F.relu(F.linear(x, p["body.0.weight"], p["body.0.bias"]))
    return F.relu(F.linear(h, p["body.2.weight"], p["body.2.bias"]))


def reference_loss(learner, episode: Episode, logits_fn) -> torch.Tensor:
    """Mean query cross-entropy with ``logits_fn(fs, sy, fq)`` applied task by task."""
    p = dict(learner.net.named_parameters())
    losses = []
    for t in range(episode.num_tasks):
        fs, fq = features_by_hand(p, episode.support_x[t]), features_by_hand(p, episode.query_x[t])
        losses.append(F.cross_entropy(logits_fn(fs, episode.support_y[t], fq), episode.query_y[t]))
    return torch.stack(losses).mean()


def check_meta_gradient(learner, episode: Episode, logits_fn, fd_rtol: float = 1e-6) -> None:
    """Loss and meta-gradient equal the reference's autograd and finite differences of the
    learner's own loss (so both the formula and its differentiation are checked)."""
    learner.zero_grad(set_to_none=True)
    loss, _ = learner.meta_backward(episode)
    params = dict(learner.named_parameters())
    ref = reference_loss(learner, episode, logits_fn)
    torch.testing.assert_close(loss, ref, rtol=1e-9, atol=1e-12)
    ref_grads = torch.autograd.grad(ref, list(params.values()), allow_unused=True)
    for (k, p), g in zip(params.items(), ref_grads):
        if g is not None:
            torch.testing.assert_close(p.grad, g, rtol=1e-7, atol=1e-10, msg=k)

    def own_loss() -> torch.Tensor:
        with torch.no_grad():
            return learner.loss_fn(learner.query_outputs(episode, 0, False), episode.query_y)

    fd = finite_difference(own_loss, list(params.values()))
    for (k, p), g in zip(params.items(), fd):
        if k.startswith("net.head."):  # the network's own head is not used by these learners
            assert p.grad is None and g.abs().max() == 0, k
            continue
        torch.testing.assert_close(p.grad, g, rtol=fd_rtol, atol=1e-8, msg=k)


# ------------------------------------------------------------------------------ ProtoNet
def protonet_by_hand(fs: torch.Tensor, sy: torch.Tensor, fq: torch.Tensor) -> torch.Tensor:
    protos = [torch.stack([fs[i] for i in range(len(sy)) if sy[i] == k]).mean(0) for k in range(WAYS)]
    return torch.stack([torch.stack([-((q - c) ** 2).sum() for c in protos]) for q in fq])


def test_protonet_matches_handwritten_prototypes(episode):
    learner = make(ProtoNet)
    out = learner.query_outputs(episode, 0, False, all_steps=True)
    assert out.shape == (3, 1, WAYS * QUERIES, WAYS)  # a single "step": no inner loop
    p = dict(learner.net.named_parameters())
    for t in range(3):
        ref = protonet_by_hand(features_by_hand(p, episode.support_x[t]), episode.support_y[t],
                               features_by_hand(p, episode.query_x[t]))
        torch.testing.assert_close(out[t, 0], ref, rtol=1e-10, atol=1e-10)
    check_meta_gradient(learner, episode, protonet_by_hand)


@pytest.mark.parametrize("vectorize", ["true", "false"])
def test_joint_forward_uses_the_whole_episodes_batch_norm_statistics(vectorize):
    """With batch norm, ``joint_forward`` prototypes are those of ``body(cat(support, query))``
    split back (float64, by hand); one forward per set gives other numbers, so the test tells
    the two apart."""
    from metaft.models import Conv4

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    ep = Episode(torch.rand(2, 6, 1, 16, 16, generator=g, dtype=torch.float64), torch.arange(3).repeat(2).expand(2, 6),
                 torch.rand(2, 9, 1, 16, 16, generator=g, dtype=torch.float64), torch.arange(3).repeat(3).expand(2, 9))
    outs = {}
    for joint in (True, False):
        torch.manual_seed(0)
        learner = ProtoNet(net=Conv4(1, 16, 4, WAYS).double(), task="classification", joint_forward=joint,
                           vectorize=vectorize, optimizer=partial(torch.optim.SGD, lr=0.1)).double()
        outs[joint] = learner.query_outputs(ep, 0, False)
    for t in range(2):
        f = learner.net.body(torch.cat([ep.support_x[t], ep.query_x[t]]))
        ref = protonet_by_hand(f[:6], ep.support_y[t], f[6:])
        torch.testing.assert_close(outs[True][t], ref, rtol=1e-10, atol=1e-10)
        sep = protonet_by_hand(learner.net.body(ep.support_x[t]), ep.support_y[t], learner.net.body(ep.query_x[t]))
        torch.testing.assert_close(outs[False][t], sep, rtol=1e-10, atol=1e-10)
    assert (outs[True] - outs[False]).abs().max() > 1e-3


# ------------------------------------------------------------------------------ MetaOptNet
def ridge_primal(lam: float, scale: torch.Tensor):
    """W = (X^T X + lam I)^-1 X^T Y: the feature-space (primal) normal equations."""

    def logits(fs, sy, fq):
        y = F.one_hot(sy, WAYS).double()
        w = torch.linalg.solve(fs.T @ fs + lam * torch.eye(fs.shape[1], dtype=fs.dtype), fs.T @ y)
        return scale * fq @ w

    return logits


@pytest.mark.parametrize("lam", [0.3, 50.0])
def test_ridge_head_matches_primal_closed_form(episode, lam):
    learner = make(MetaOptNet, head="ridge", ridge_lambda=lam, scale_init=1.7)
    check_meta_gradient(learner, episode, ridge_primal(lam, learner.scale))
    assert learner.scale.grad.abs() > 1e-6  # the learned scale receives a gradient


def svm_primal_by_scipy(fs: np.ndarray, y: np.ndarray, c: float, gram_ridge: float) -> np.ndarray:
    """Crammer-Singer primal weights ``[ways, D]`` by SLSQP, on features extended with
    ``sqrt(gram_ridge)`` times a private unit vector per example (the dual's Gram + ridge I):

        min 1/2 |W|^2 + c sum_n xi_n  s.t.  (w_{y_n} - w_k) . x_n >= 1 - xi_n (k != y_n), xi >= 0.
    """
    n, d = fs.shape
    x = np.hstack([fs, np.sqrt(gram_ridge) * np.eye(n)])
    dx, ways = x.shape[1], WAYS
    rows = [(i, k) for i in range(n) for k in range(ways) if k != y[i]]
    a = np.zeros((len(rows), ways * dx + n))
    for r, (i, k) in enumerate(rows):
        a[r, y[i] * dx : (y[i] + 1) * dx] += x[i]
        a[r, k * dx : (k + 1) * dx] -= x[i]
        a[r, ways * dx + i] = 1.0
    mask = np.r_[np.ones(ways * dx), np.zeros(n)]
    res = minimize(
        lambda z: 0.5 * np.sum(mask * z * z) + c * z[ways * dx :].sum(),
        np.zeros(ways * dx + n),
        jac=lambda z: mask * z + np.r_[np.zeros(ways * dx), c * np.ones(n)],
        constraints=[{"type": "ineq", "fun": lambda z: a @ z - 1.0, "jac": lambda z: a}],
        bounds=[(None, None)] * (ways * dx) + [(0, None)] * n,
        method="SLSQP", options={"ftol": 1e-12, "maxiter": 1000},
    )
    assert res.success, res.message
    return res.x[: ways * dx].reshape(ways, dx)[:, :d]


def random_problem(seed: int, n: int, d: int):
    g = torch.Generator().manual_seed(seed)
    fs = torch.relu(torch.randn(n, d, generator=g, dtype=torch.float64)) + 0.1  # correlated, like ReLU features
    fq = torch.relu(torch.randn(5, d, generator=g, dtype=torch.float64))
    sy = torch.arange(n) % WAYS
    return fs, sy, fq


@pytest.mark.parametrize("c,gram_ridge,n,d", [(0.1, 1.0, 6, 8), (1.0, 0.1, 6, 8), (0.5, 1.0, 9, 4), (5.0, 0.01, 6, 3)])
def test_svm_matches_scipy_primal_and_kkt(c, gram_ridge, n, d):
    fs, sy, fq = random_problem(n * d, n, d)
    y = F.one_hot(sy, WAYS).double()
    alpha = svm_cs_dual(fs @ fs.T, y, c, gram_ridge, iters=30)
    w_ref = svm_primal_by_scipy(fs.numpy(), sy.numpy(), c, gram_ridge)
    torch.testing.assert_close(fq @ fs.T @ alpha, fq @ torch.from_numpy(w_ref).T, rtol=1e-5, atol=1e-6)

    # KKT of the dual, brute force: feasible, and in every row the gradient g = H alpha - y is
    # largest (= -nu) on every entry strictly below its bound, no larger elsewhere.
    ub = c * y
    assert (alpha <= ub + 1e-12).all() and alpha.sum(1).abs().max() < 1e-12
    g = (fs @ fs.T + gram_ridge * torch.eye(n, dtype=fs.dtype)) @ alpha - y
    free = alpha < ub - 1e-9
    gmax = g.max(1, keepdim=True).values
    assert ((gmax - g)[free].abs() < 1e-9).all()
    # Both kinds of entries occur, so the check and the gradient tests below are not vacuous.
    assert free.any() and (~free).any()


@pytest.mark.parametrize("c,gram_ridge,n,d", [(0.1, 1.0, 6, 8), (1.0, 0.1, 9, 4)])
def test_svm_gradient_matches_finite_differences(c, gram_ridge, n, d):
    fs, sy, fq = random_problem(7 + n, n, d)
    y = F.one_hot(sy, WAYS).double()
    r = torch.randn(fq.shape[0], WAYS, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def objective(fs: torch.Tensor, fq: torch.Tensor) -> torch.Tensor:
        return (r * (fq @ fs.T @ svm_cs_dual(fs @ fs.T, y, c, gram_ridge, iters=30))).sum()

    fs.requires_grad_(), fq.requires_grad_()
    grads = torch.autograd.grad(objective(fs, fq), [fs, fq])
    with torch.no_grad():
        fd = finite_difference(lambda: objective(fs, fq), [fs, fq])
    for g, g_fd in zip(grads, fd):
        torch.testing.assert_close(g, g_fd, rtol=1e-6, atol=1e-8)
    assert grads[0].abs().max() > 1e-3


def test_svm_learner_meta_gradient_matches_finite_differences(episode):
    learner = make(MetaOptNet, head="svm", svm_c=0.5, svm_iters=30, scale_init=1.3)

    def svm_logits(fs, sy, fq):  # the solution is checked above; here its composition and gradient
        return learner.scale * fq @ fs.T @ svm_cs_dual(fs @ fs.T, F.one_hot(sy, WAYS).double(), 0.5, 1.0, 30)

    check_meta_gradient(learner, episode, svm_logits, fd_rtol=1e-5)


def test_svm_solution_in_float32_is_close_to_float64():
    fs, sy, fq = random_problem(3, 25, 64)
    y = F.one_hot(sy, WAYS).double()
    ref = fq @ fs.T @ svm_cs_dual(fs @ fs.T, y, 0.1, 1.0, iters=30)
    fs32, fq32 = fs.float(), fq.float()
    out = fq32 @ fs32.T @ svm_cs_dual(fs32 @ fs32.T, y.float(), 0.1, 1.0, iters=15)  # the default
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), ref, rtol=1e-3, atol=1e-4)


# ---------------------------------------------------------------------- supervised pre-training
def test_pretrain_head_fit_is_gradient_descent_on_frozen_features(episode):
    steps, lr = 4, 0.3
    learner = make(Pretrain, eval_inner_steps=steps, inner_lr=lr)
    out = learner.query_outputs(episode, steps, True, all_steps=True)  # [tasks, steps+1, Q, ways]
    p = dict(learner.net.named_parameters())
    with torch.no_grad():
        for t in range(3):
            fs, fq = features_by_hand(p, episode.support_x[t]), features_by_hand(p, episode.query_x[t])
            y = F.one_hot(episode.support_y[t], WAYS).double()
            w, b = torch.zeros(WAYS, fs.shape[1], dtype=fs.dtype), torch.zeros(WAYS, dtype=fs.dtype)
            for s in range(steps + 1):
                torch.testing.assert_close(out[t, s], fq @ w.T + b, rtol=1e-10, atol=1e-12)
                err = (torch.softmax(fs @ w.T + b, -1) - y) / len(fs)  # d mean-CE / d logits
                w, b = w - lr * err.T @ fs, b - lr * err.sum(0)


def test_pretrain_training_is_plain_classification():
    learner = make(Pretrain, eval_inner_steps=2)
    learner.make_classifier(7)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(10, 6, generator=g, dtype=torch.float64), torch.randint(7, (10,), generator=g)
    loss, out = learner.batch_backward(x, y)
    p = {k[len("net."):] if k.startswith("net.") else k: v for k, v in learner.named_parameters()}
    ref = F.cross_entropy(F.linear(features_by_hand(p, x), p["classifier.weight"], p["classifier.bias"]), y)
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
    for (k, v), g_ref in zip(learner.named_parameters(), torch.autograd.grad(ref, list(p.values()), allow_unused=True)):
        assert (v.grad is None) == (g_ref is None), k
        if g_ref is not None:
            torch.testing.assert_close(v.grad, g_ref, rtol=1e-10, atol=1e-12, msg=k)


def test_pretrain_classifier_is_sized_from_the_checkpoint():
    trained = make(Pretrain, eval_inner_steps=2)
    trained.make_classifier(7)
    fresh = make(Pretrain, eval_inner_steps=2)
    fresh.load_state_dict(trained.state_dict())
    assert fresh.classifier.out_features == 7
    torch.testing.assert_close(fresh.classifier.weight, trained.classifier.weight)
    other = make(Pretrain, eval_inner_steps=2)
    other.make_classifier(5)
    with pytest.raises(RuntimeError, match="classifier.weight"):
        other.load_state_dict(trained.state_dict())


# ------------------------------------------------------------------------------- all of them
LEARNERS = [(ProtoNet, {}), (MetaOptNet, {"head": "ridge"}), (MetaOptNet, {"head": "svm"}),
            (Pretrain, {"eval_inner_steps": 3, "inner_lr": 0.5}),
            (Pretrain, {"classifier": "cosine", "scale": 2.0, "eval_inner_steps": 3, "inner_lr": 0.5}),  # Baseline++
            (ProtoNet, {"distance": "cosine", "scale_init": 2.0})]  # Meta-Baseline
IDS = ["protonet", "ridge", "svm", "pretrain", "baselinepp", "metabaseline"]


@pytest.mark.parametrize("cls,kw", LEARNERS, ids=IDS)
def test_vmap_and_loop_agree(episode, cls, kw):
    a, b = make(cls, "true", **kw), make(cls, "false", **kw)
    steps = a.eval_inner_steps
    out = a.query_outputs(episode, steps, True, all_steps=True)
    torch.testing.assert_close(out, b.query_outputs(episode, steps, True, all_steps=True), rtol=1e-9, atol=1e-12)
    # ...and both equal solve_task task by task, without vmap anywhere (the per-task route).
    ep, meta = episode, a.meta_params()
    per_task = [a.solve_task(meta, ep.support_x[i], ep.support_y[i], ep.query_x[i], steps, True, True) for i in range(3)]
    torch.testing.assert_close(out, torch.stack(per_task), rtol=1e-9, atol=1e-12)
    if cls is Pretrain:  # its training step is plain classification, no map over tasks
        return
    for learner in (a, b):
        learner.meta_backward(episode)
    for (k, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert (pa.grad is None) == (pb.grad is None), k
        if pa.grad is not None:
            torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-9, atol=1e-12, msg=k)


@pytest.mark.parametrize("cls,kw", LEARNERS, ids=IDS)
@pytest.mark.parametrize("vectorize", ["true", "false"])
def test_heads_run_in_float32_under_mixed_precision(episode, cls, kw, vectorize):
    learner = make(cls, vectorize, **kw).float()
    ep = Episode(episode.support_x.float(), episode.support_y, episode.query_x.float(), episode.query_y)
    meta, steps = learner.meta_params(), learner.eval_inner_steps
    ref = learner.query_outputs(ep, steps, True)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the body runs in bfloat16, the head must not
        outs = [learner.query_outputs(ep, steps, True),
                learner.solve_task(meta, ep.support_x[0], ep.support_y[0], ep.query_x[0], steps, True, False)]
    for out in outs:
        assert out.dtype == torch.float32
    torch.testing.assert_close(outs[0], ref, rtol=0.05, atol=0.05)  # only the body's rounding differs
    torch.testing.assert_close(outs[1], ref[0], rtol=0.05, atol=0.05)


def test_ways_follows_the_episode(episode):
    """Nothing is sized by the network's head: 2-way episodes through a 3-output MLP."""
    keep = lambda y: y < 2  # noqa: E731
    two_way = Episode(episode.support_x[:, keep(episode.support_y[0])], episode.support_y[:, keep(episode.support_y[0])],
                      episode.query_x[:, keep(episode.query_y[0])], episode.query_y[:, keep(episode.query_y[0])])
    for cls, kw in LEARNERS:
        learner = make(cls, **kw)
        assert learner.query_outputs(two_way, learner.eval_inner_steps, True).shape[-1] == 2


def test_bad_episodes_and_arguments_raise(episode):
    learner = make(ProtoNet)
    sy = episode.support_y
    no_class_1 = Episode(episode.support_x, torch.where(sy == 1, 2, sy), episode.query_x, episode.query_y)
    with pytest.raises(ValueError, match="every class in every support set"):
        learner.query_outputs(no_class_1, 0, False)
    with pytest.raises(ValueError, match="every class in every support set"):
        make(ProtoNet, vectorize="false").meta_backward(no_class_1)
    negative = Episode(episode.support_x, episode.support_y - 1, episode.query_x, episode.query_y - 1)
    with pytest.raises(ValueError, match=r"labels in \[-1, 1\]"):
        learner.query_outputs(negative, 0, False)
    with pytest.raises(ValueError, match="algorithm.inner_steps=0"):
        make(ProtoNet, inner_steps=1)
    with pytest.raises(ValueError, match="eval_inner_steps"):
        make(MetaOptNet, eval_inner_steps=5)
    with pytest.raises(ValueError, match="algorithm.head must be 'ridge' or 'svm'"):
        make(MetaOptNet, head="lasso")
    with pytest.raises(ValueError, match="svm_c must be > 0"):
        make(MetaOptNet, svm_c=0.0)
    with pytest.raises(ValueError, match="eval_inner_steps > 0"):
        make(Pretrain, eval_inner_steps=0)
    with pytest.raises(ValueError, match="classification only"):
        ProtoNet(net=MLP(1, (4,), 1), task="regression")
    # Options of the gradient inner loop would do nothing here (Pretrain's learned step sizes
    # would fail only at the first evaluation): refused, naming what to set.
    for cls, kw in LEARNERS:
        for key in ("first_order", "zero_head", "learn_inner_lr", "adapt_head_only"):
            with pytest.raises(ValueError, match=f"no meta-learned inner loop for algorithm.{key} to change: "
                                                 f"set algorithm.{key}=false"):
                make(cls, **kw, **{key: True})
