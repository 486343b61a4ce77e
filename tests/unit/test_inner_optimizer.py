"""The inner loop's optimisers (SGD, momentum, Adam), support mini-batches and carried state,
checked in float64 against torch.optim on the same steps and against hand-written loops."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from metaft.algorithms import MAML, ProtoNet, Reptile
from metaft.core.inner_loop import InnerOptimizer, InnerState, adapt, batch_indices, support_batches
from metaft.data.episode import Episode
from metaft.models import MLP
from tests.conftest import sgd
from tests.unit.test_gradients import finite_difference, forward

OPTIMIZERS = {
    "sgd": (InnerOptimizer(), lambda ps, lr: torch.optim.SGD(ps, lr=lr)),
    "momentum": (InnerOptimizer("sgd", momentum=0.9), lambda ps, lr: torch.optim.SGD(ps, lr=lr, momentum=0.9)),
    "adam": (InnerOptimizer("adam"), lambda ps, lr: torch.optim.Adam(ps, lr=lr)),
    "adam_beta1_0": (InnerOptimizer("adam", betas=(0.0, 0.99), eps=1e-6),
                     lambda ps, lr: torch.optim.Adam(ps, lr=lr, betas=(0.0, 0.99), eps=1e-6)),
}


def start_params() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.detach() for k, v in MLP(1, (6, 5), 1).double().named_parameters()}


def torch_optim_run(make_opt, params, tasks, lr, steps, batches=None, carry=False):
    """torch.optim on leaf copies: each task from ``params``; the optimiser made once and kept
    (carry: only the weights are restored between tasks, as Reptile's code does) or made per task."""
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    opt = make_opt(list(leaves.values()), lr)
    out = []
    for t, (x, y) in enumerate(tasks):
        with torch.no_grad():
            for k, v in leaves.items():
                v.copy_(params[k])
        if not carry:
            opt = make_opt(list(leaves.values()), lr)
        for i in range(steps):
            idx = slice(None) if batches is None else batches[t][i]
            opt.zero_grad()
            F.mse_loss(forward(leaves, x[idx]), y[idx]).backward()
            opt.step()
        out.append({k: v.detach().clone() for k, v in leaves.items()})
    return out


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("batch", [None, 3])
def test_each_optimizer_is_torch_optims_arithmetic(sinusoid_episode, name, batch):
    ours, make_opt = OPTIMIZERS[name]
    params, ep, steps, lr = start_params(), sinusoid_episode, 6, 0.03
    tasks = [(ep.support_x[t], ep.support_y[t]) for t in range(ep.num_tasks)]
    batches = [support_batches(x, batch, steps, batched=False) for x, _ in tasks]
    reference = torch_optim_run(make_opt, params, tasks, lr, steps, batches if batch else None)
    for t, (x, y) in enumerate(tasks):
        adapted = adapt(forward, params, x, y, F.mse_loss, steps, lr, True, optimizer=ours, batches=batches[t])[-1]
        for k in params:
            torch.testing.assert_close(adapted[k], reference[t][k], rtol=1e-12, atol=1e-14)
    # All tasks at once (a leading task dimension, per-task mini-batches) gives every task's own result.
    x, y = ep.support_x, ep.support_y
    stacked = support_batches(x, batch, steps, batched=True)
    batched = adapt(torch.vmap(forward), {k: v.expand(len(x), *v.shape) for k, v in params.items()}, x, y,
                    lambda o, t: F.mse_loss(o, t, reduction="none").mean((1, 2)).sum(), steps, lr, True,
                    optimizer=ours, batches=stacked)[-1]
    for t in range(len(x)):
        for k in params:
            torch.testing.assert_close(batched[k][t], reference[t][k], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["momentum", "adam_beta1_0"])
def test_carried_state_is_one_torch_optimizer_across_tasks(sinusoid_episode, name):
    ours, make_opt = OPTIMIZERS[name]
    params, ep, steps, lr = start_params(), sinusoid_episode, 4, 0.02
    tasks = [(ep.support_x[t], ep.support_y[t]) for t in range(ep.num_tasks)]
    reference = torch_optim_run(make_opt, params, tasks, lr, steps, carry=True)
    state = InnerState()
    for t, (x, y) in enumerate(tasks):
        adapted = adapt(forward, params, x, y, F.mse_loss, steps, lr, True, optimizer=ours, state=state)[-1]
        for k in params:
            torch.testing.assert_close(adapted[k], reference[t][k], rtol=1e-12, atol=1e-14)
    assert state.step == steps * len(tasks)
    # Reset state differs from carried state after the first task (the check can fail).
    fresh = torch_optim_run(make_opt, params, tasks, lr, steps)
    assert not torch.allclose(fresh[1]["head.weight"], reference[1]["head.weight"])


def test_plain_sgd_is_the_handwritten_step(sinusoid_episode):
    """With the new options off the inner loop is the one before them, bit for bit: p - lr * grad
    (one fused add per parameter), step after step."""
    params, ep = start_params(), sinusoid_episode
    x, y = ep.support_x[0], ep.support_y[0]
    p = {k: v.clone().requires_grad_() for k, v in params.items()}
    for _ in range(3):
        g = torch.autograd.grad(F.mse_loss(forward(p, x), y), list(p.values()))
        p = {k: torch.add(v, gk, alpha=-0.05).detach().requires_grad_() for (k, v), gk in zip(p.items(), g)}
    ours = adapt(forward, params, x, y, F.mse_loss, 3, 0.05, True)[-1]
    for k in params:
        assert torch.equal(ours[k], p[k].detach())


@pytest.mark.parametrize("name", ["momentum", "adam"])
def test_second_order_through_the_optimizer_matches_finite_differences(sinusoid_episode, name):
    ours = OPTIMIZERS[name][0]
    ep = sinusoid_episode
    params = {k: v.clone().requires_grad_() for k, v in start_params().items()}
    # A zero gradient entry (a dead unit) must not turn Adam's sqrt into a NaN meta-gradient.
    with torch.no_grad():
        params["body.2.weight"][0].zero_()
        params["body.2.bias"][0] = -10.0

    def meta_loss():
        adapted = adapt(forward, params, ep.support_x[0], ep.support_y[0], F.mse_loss, 3, 0.02, optimizer=ours)[-1]
        return F.mse_loss(forward(adapted, ep.query_x[0]), ep.query_y[0])

    grads = torch.autograd.grad(meta_loss(), list(params.values()))
    assert all(torch.isfinite(g).all() for g in grads)
    fd = finite_difference(meta_loss, list(params.values()))
    for g, g_fd in zip(grads, fd):
        torch.testing.assert_close(g, g_fd, rtol=1e-5, atol=1e-7)


def test_mini_batches_cover_the_support_set_once_per_pass():
    idx = batch_indices(10, 4, 5, torch.Generator().manual_seed(0))  # 20 draws: two whole passes
    assert idx.shape == (5, 4)
    flat = idx.flatten()
    assert sorted(flat[:10].tolist()) == list(range(10)) and sorted(flat[10:].tolist()) == list(range(10))
    x = torch.randn(10, 3)
    a, b = support_batches(x, 4, 5, False), support_batches(x.clone(), 4, 5, False)
    assert torch.equal(a, b)  # keyed by the support set's content: the same task, the same batches
    assert not torch.equal(a, support_batches(torch.randn(10, 3), 4, 5, False))
    assert support_batches(x, None, 5, False) is None and support_batches(x, 10, 5, False) is None
    with pytest.raises(ValueError, match="larger than the support set"):
        support_batches(x, 11, 5, False)


def make_reptile(**kw) -> Reptile:
    torch.manual_seed(0)
    return Reptile(net=MLP(1, (6, 5), 1).double(), task="regression", inner_lr=0.01, inner_steps=3,
                   optimizer=sgd(1.0), **kw).double()


def test_reptile_with_adam_carry_and_batches_is_the_plain_loop(sinusoid_episode):
    """Reptile's paper setting (Adam, beta1 = 0, moments carried over, support mini-batches) equals
    what a user would write: torch.optim.Adam on a copy of the module, task after task."""
    ep = sinusoid_episode
    kw = dict(inner_optimizer="adam", inner_betas=[0.0, 0.999], inner_state="carry", inner_batch=2)
    learner = make_reptile(**kw)
    module = copy.deepcopy(learner.net)
    theta = {k: v.detach().clone() for k, v in module.named_parameters()}
    inner = torch.optim.Adam(module.parameters(), lr=0.01, betas=(0.0, 0.999))
    phis = []
    for _ in range(2):  # two meta-steps: the moments carry over between them too
        step_phis = []
        for t in range(ep.num_tasks):
            with torch.no_grad():
                for k, p in module.named_parameters():
                    p.copy_(theta[k])
            for idx in support_batches(ep.support_x[t], 2, 3, batched=False):
                inner.zero_grad()
                F.mse_loss(module(ep.support_x[t][idx]), ep.support_y[t][idx]).backward()
                inner.step()
            step_phis.append({k: p.detach().clone() for k, p in module.named_parameters()})
        theta = {k: theta[k] + 1.0 * (torch.stack([p[k] for p in step_phis]).mean(0) - theta[k]) for k in theta}
        phis.append(theta)
    opt = learner.configure_optimizers()
    for step in range(2):
        opt.zero_grad()
        learner.meta_backward(ep)
        opt.step()
        for k, v in learner.net.named_parameters():
            torch.testing.assert_close(v.detach(), phis[step][k], rtol=1e-10, atol=1e-12)
    assert int(learner.carried.step) == 2 * ep.num_tasks * 3
    # The carried state travels with the weights: a fresh learner given the state dict evaluates alike.
    other = make_reptile(**kw)
    other.load_state_dict(learner.state_dict())
    assert int(other.carried.step) == int(learner.carried.step)
    learner.eval(), other.eval()
    a = learner.query_outputs(ep, 5, True)
    b = other.query_outputs(ep, 5, True)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # Evaluation starts each task from the carried state and leaves it as it was.
    assert int(learner.carried.step) == 2 * ep.num_tasks * 3


def test_evaluation_uses_its_own_inner_settings(sinusoid_episode):
    learner = make_reptile(inner_optimizer="sgd", eval_inner_optimizer="adam", inner_batch=2, eval_inner_batch=4)
    assert learner.inner_settings() == (InnerOptimizer("sgd"), 2)
    learner.eval()
    assert learner.inner_settings() == (InnerOptimizer("adam", setting="algorithm.eval_inner"), 4)


@pytest.mark.parametrize("kw,match", [
    ({"inner_optimizer": "adamw"}, r"algorithm.inner_optimizer must be one of sgd, adam, got 'adamw'"),
    ({"eval_inner_optimizer": "rmsprop"}, r"algorithm.eval_inner_optimizer must be one of sgd, adam"),
    ({"inner_optimizer": "adam", "inner_betas": [0.9, 1.0]}, r"algorithm.inner_betas must be two numbers in \[0, 1\)"),
    ({"inner_optimizer": "adam", "inner_betas": [-0.1, 0.9]}, r"algorithm.inner_betas"),
    ({"inner_momentum": 1.5}, r"algorithm.inner_momentum must be in \[0, 1\)"),
    ({"inner_optimizer": "adam", "inner_momentum": 0.9}, r"algorithm.inner_momentum=0.9 is SGD's"),
    ({"inner_eps": 0.0, "inner_optimizer": "adam"}, r"algorithm.inner_eps must be > 0"),
    ({"inner_batch": 0}, r"algorithm.inner_batch must be a number of support examples >= 1"),
    ({"inner_state": "keep"}, r"algorithm.inner_state must be reset or carry"),
    ({"inner_state": "carry"}, r"plain SGD has no state to carry"),
    ({"inner_state": "carry", "inner_optimizer": "adam", "vectorize": "true"}, r"set algorithm.vectorize=auto or false"),
    ({"first_order": False}, r"Reptile's update uses the adapted weights only.*drop algorithm.first_order=false"),
])
def test_bad_inner_settings_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        make_reptile(**kw)


def test_inner_batch_larger_than_the_support_set_is_refused_before_the_run():
    learner = make_reptile(inner_batch=6, eval_inner_batch=20)
    learner.check_support_size(10, 20)
    with pytest.raises(ValueError, match=r"algorithm.inner_batch=6 is larger than the 5 support examples of a meta-training task"):
        learner.check_support_size(5, 20)
    with pytest.raises(ValueError, match=r"algorithm.eval_inner_batch=20 is larger than the 10 support examples"):
        learner.check_support_size(10, 10)


def test_feature_head_learners_refuse_the_inner_optimizer():
    net = MLP(1, (6, 5), 3)
    ProtoNet(net=net, task="classification", inner_optimizer="sgd", inner_betas=[0.9, 0.999], optimizer=sgd())
    # As a stored config gives them (a ListConfig): the defaults still, so accepted.
    ProtoNet(net=net, task="classification", inner_betas=OmegaConf.create([0.9, 0.999]), optimizer=sgd())
    with pytest.raises(ValueError, match=r"drop algorithm.inner_optimizer, algorithm.inner_batch"):
        ProtoNet(net=net, task="classification", inner_optimizer="adam", inner_batch=4, optimizer=sgd())


def test_maml_with_adam_inner_loop_vmap_and_loop_agree(sinusoid_episode):
    def grads(vectorize):
        torch.manual_seed(0)
        learner = MAML(net=MLP(1, (6, 5), 1).double(), task="regression", inner_lr=0.01, inner_steps=2,
                       optimizer=sgd(), inner_optimizer="adam", inner_batch=3, vectorize=vectorize).double()
        learner.meta_backward(sinusoid_episode)
        return {k: p.grad.clone() for k, p in learner.named_parameters()}

    a, b = grads("true"), grads("false")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-9, atol=1e-12)
