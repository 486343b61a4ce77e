"""Meta-gradients checked against float64 references written by hand, independent of torch.func."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from metaft.algorithms import ANIL, MAML, MetaSGD, Reptile
from metaft.models import MLP, MetaNet
from tests.conftest import sgd

INNER_LR, STEPS = 0.05, 2


def make(cls, **kw):
    torch.manual_seed(0)
    net = MLP(1, (6, 5), 1).double()
    learner = cls(net=net, task="regression", inner_lr=INNER_LR, inner_steps=STEPS, optimizer=sgd(), **kw)
    return learner.double()


def forward(params: dict, x: torch.Tensor) -> torch.Tensor:
    """The MLP written out by hand: body.0 -> relu -> body.2 -> relu -> head."""
    h = F.relu(F.linear(x, params["body.0.weight"], params["body.0.bias"]))
    h = F.relu(F.linear(h, params["body.2.weight"], params["body.2.bias"]))
    return F.linear(h, params["head.weight"], params["head.bias"])


def reference_meta_loss(params, episode, lrs=None, adapted_keys=None, first_order=False, create_graph=True):
    """Mean query loss after STEPS plain-autograd SGD steps per task (a hand-written loop)."""
    keys = adapted_keys or list(params)
    losses = []
    for t in range(episode.num_tasks):
        p = dict(params)
        for _ in range(STEPS):
            loss = F.mse_loss(forward(p, episode.support_x[t]), episode.support_y[t])
            grads = torch.autograd.grad(loss, [p[k] for k in keys], create_graph=create_graph and not first_order)
            for k, g in zip(keys, grads):
                step = (lrs[k] if lrs is not None else INNER_LR) * (g.detach() if first_order else g)
                p[k] = p[k] - step
        losses.append(F.mse_loss(forward(p, episode.query_x[t]), episode.query_y[t]))
    return torch.stack(losses).mean()


def finite_difference(fn, tensors: list[torch.Tensor], eps: float = 1e-6) -> list[torch.Tensor]:
    """Central differences of scalar fn() with respect to every entry of ``tensors`` (float64)."""
    out = []
    for t in tensors:
        g = torch.zeros_like(t)
        flat = t.data.view(-1)
        for i in range(flat.numel()):
            old = flat[i].item()
            flat[i] = old + eps
            hi = fn().item()
            flat[i] = old - eps
            lo = fn().item()
            flat[i] = old
            g.view(-1)[i] = (hi - lo) / (2 * eps)
        out.append(g)
    return out


def meta_grads(learner, episode) -> dict[str, torch.Tensor]:
    learner.zero_grad(set_to_none=True)
    learner.meta_backward(episode)
    return {k: p.grad.clone() for k, p in learner.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("vectorize", ["true", "false"])
def test_maml_second_order_matches_finite_differences(sinusoid_episode, vectorize):
    learner = make(MAML, vectorize=vectorize)
    grads = meta_grads(learner, sinusoid_episode)
    params = dict(learner.net.named_parameters())
    fd = finite_difference(lambda: reference_meta_loss(params, sinusoid_episode, create_graph=False), list(params.values()))
    for (k, _), g_fd in zip(params.items(), fd):
        torch.testing.assert_close(grads[f"net.{k}"], g_fd, rtol=1e-5, atol=1e-7, msg=k)


def test_maml_matches_handwritten_double_backward(sinusoid_episode):
    learner = make(MAML)
    grads = meta_grads(learner, sinusoid_episode)
    params = dict(learner.net.named_parameters())
    ref = torch.autograd.grad(reference_meta_loss(params, sinusoid_episode), list(params.values()))
    for k, g in zip(params, ref):
        torch.testing.assert_close(grads[f"net.{k}"], g, rtol=1e-10, atol=1e-12)


def test_second_order_terms_matter(sinusoid_episode):
    """Guards the two tests above and below against passing for the wrong reason."""
    so = meta_grads(make(MAML), sinusoid_episode)
    fo = meta_grads(make(MAML, first_order=True), sinusoid_episode)
    assert max((so[k] - fo[k]).abs().max().item() for k in so) > 1e-4


def test_first_order_maml_is_its_definition(sinusoid_episode):
    """FOMAML: the mean over tasks of the query-loss gradient at the adapted parameters."""
    learner = make(MAML, first_order=True)
    grads = meta_grads(learner, sinusoid_episode)
    params = {k: v.detach().clone() for k, v in learner.net.named_parameters()}
    expected = {k: torch.zeros_like(v) for k, v in params.items()}
    ep = sinusoid_episode
    for t in range(ep.num_tasks):
        p = {k: v.clone().requires_grad_() for k, v in params.items()}
        for _ in range(STEPS):
            g = torch.autograd.grad(F.mse_loss(forward(p, ep.support_x[t]), ep.support_y[t]), list(p.values()))
            p = {k: (v - INNER_LR * gk).detach().requires_grad_() for (k, v), gk in zip(p.items(), g)}
        g = torch.autograd.grad(F.mse_loss(forward(p, ep.query_x[t]), ep.query_y[t]), list(p.values()))
        for k, gk in zip(p, g):
            expected[k] += gk / ep.num_tasks
    for k in params:
        torch.testing.assert_close(grads[f"net.{k}"], expected[k], rtol=1e-10, atol=1e-12)


# Each gradient learner's config (conf/algorithm/<name>.yaml) and the parameters its inner loop
# moves (None: all). Adding an algorithm of this family is one row.
INNER_LOOPS = [
    ("maml", None),
    ("anil", ("head.",)),
    ("boil", ("body.",)),
]


@pytest.mark.parametrize("name,adapted", INNER_LOOPS)
@pytest.mark.parametrize("vectorize", ["true", "false"])
def test_meta_gradient_matches_the_handwritten_loop(sinusoid_episode, tmp_path, name, adapted, vectorize):
    """The learner its config builds, against ``reference_meta_loss`` adapting the same subset
    of parameters, differentiated twice by plain autograd (float64)."""
    from hydra.utils import instantiate

    from tests.conftest import compose

    cfg = compose("train", [f"algorithm={name}"], tmp_path)
    torch.manual_seed(0)
    net = MLP(1, (6, 5), 1).double()
    learner = instantiate(cfg.algorithm, net=net, task="regression", inner_lr=INNER_LR, inner_steps=STEPS,
                          optimizer=sgd(), vectorize=vectorize).double()
    grads = meta_grads(learner, sinusoid_episode)
    params = dict(learner.net.named_parameters())
    keys = [k for k in params if adapted is None or k.startswith(adapted)]
    ref = torch.autograd.grad(reference_meta_loss(params, sinusoid_episode, adapted_keys=keys), list(params.values()))
    for k, g in zip(params, ref):
        torch.testing.assert_close(grads[f"net.{k}"], g, rtol=1e-10, atol=1e-12, msg=k)


@pytest.mark.parametrize("vectorize", ["true", "false"])
def test_metasgd_step_size_gradients_match_finite_differences(sinusoid_episode, vectorize):
    learner = make(MetaSGD, vectorize=vectorize)
    with torch.no_grad():  # distinct step sizes, so a mix-up of entries would show
        for p in learner.inner_lrs.values():
            p.uniform_(0.01, 0.08)
    grads = meta_grads(learner, sinusoid_episode)
    params = dict(learner.net.named_parameters())
    lrs = {k.replace("__", "."): v for k, v in learner.inner_lrs.items()}
    fd = finite_difference(
        lambda: reference_meta_loss(params, sinusoid_episode, lrs=lrs, create_graph=False), list(lrs.values())
    )
    for (k, _), g_fd in zip(lrs.items(), fd):
        torch.testing.assert_close(grads[f"inner_lrs.{k.replace('.', '__')}"], g_fd, rtol=1e-5, atol=1e-7, msg=k)
    ref = torch.autograd.grad(reference_meta_loss(params, sinusoid_episode, lrs=lrs), list(params.values()))
    for k, g in zip(params, ref):
        torch.testing.assert_close(grads[f"net.{k}"], g, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("vectorize", ["true", "false"])
def test_anil_adapts_only_the_head(sinusoid_episode, vectorize):
    learner = make(ANIL, vectorize=vectorize)
    meta = learner.meta_params()
    _, start, *_ = learner.inner_problem(meta, sinusoid_episode.support_x[0], sinusoid_episode.query_x[0])
    assert set(start) == {"weight", "bias"}  # the head's, nothing of the body
    grads = meta_grads(learner, sinusoid_episode)
    params = dict(learner.net.named_parameters())
    head = ["head.weight", "head.bias"]
    ref = torch.autograd.grad(reference_meta_loss(params, sinusoid_episode, adapted_keys=head), list(params.values()))
    for k, g in zip(params, ref):
        torch.testing.assert_close(grads[f"net.{k}"], g, rtol=1e-10, atol=1e-12)
    # ...and this differs from full MAML, so the test can tell the two apart.
    full = torch.autograd.grad(reference_meta_loss(params, sinusoid_episode), list(params.values()))
    assert (full[0] - grads["net.body.0.weight"]).abs().max() > 1e-6


@pytest.mark.parametrize("vectorize", ["true", "false"])
def test_metasgd_on_the_head_only(sinusoid_episode, vectorize):
    """ANIL with learned step sizes: the head's entries only, named as in the network (as
    fine-tuning reads them), with the hand-written loop's meta-gradient and step-size gradients
    equal to finite differences (float64)."""
    from metaft.finetune import metasgd_step_sizes

    learner = make(ANIL, vectorize=vectorize, learn_inner_lr=True)
    assert set(learner.inner_lrs) == {"head__weight", "head__bias"}
    with torch.no_grad():  # distinct step sizes, so a mix-up of entries would show
        for p in learner.inner_lrs.values():
            p.uniform_(0.01, 0.08)
    grads = meta_grads(learner, sinusoid_episode)
    params = dict(learner.net.named_parameters())
    head = ["head.weight", "head.bias"]
    lrs = {k.replace("__", "."): v for k, v in learner.inner_lrs.items()}
    ref = torch.autograd.grad(reference_meta_loss(params, sinusoid_episode, lrs, head), list(params.values()))
    for k, g in zip(params, ref):
        torch.testing.assert_close(grads[f"net.{k}"], g, rtol=1e-10, atol=1e-12)
    fd = finite_difference(
        lambda: reference_meta_loss(params, sinusoid_episode, lrs, head, create_graph=False), list(lrs.values())
    )
    for k, g_fd in zip(lrs, fd):
        torch.testing.assert_close(grads[f"inner_lrs.{k.replace('.', '__')}"], g_fd, rtol=1e-5, atol=1e-7, msg=k)
    scales = metasgd_step_sizes(learner.net, learner.state_dict(), "test")
    assert set(scales) == {"net.head.weight", "net.head.bias"}
    torch.testing.assert_close(scales["net.head.weight"], lrs["head.weight"].detach())


def test_reptile_update_is_the_formula(sinusoid_episode):
    eps = 0.3
    learner = make(Reptile)
    learner.optimizer_factory = sgd(eps)
    opt = learner.configure_optimizers()
    theta = {k: v.detach().clone() for k, v in learner.net.named_parameters()}
    phis = []
    ep = sinusoid_episode
    for t in range(ep.num_tasks):
        p = {k: v.clone().requires_grad_() for k, v in theta.items()}
        for _ in range(STEPS):
            g = torch.autograd.grad(F.mse_loss(forward(p, ep.support_x[t]), ep.support_y[t]), list(p.values()))
            p = {k: (v - INNER_LR * gk).detach().requires_grad_() for (k, v), gk in zip(p.items(), g)}
        phis.append(p)
    opt.zero_grad()
    learner.meta_backward(ep)
    opt.step()
    for k, v in learner.net.named_parameters():
        mean_phi = torch.stack([p[k].detach() for p in phis]).mean(0)
        torch.testing.assert_close(v.detach(), theta[k] + eps * (mean_phi - theta[k]), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="algorithm.inner_steps must be >= 1, got 0"):
        Reptile(net=MLP(1, (6, 5), 1), task="regression", inner_lr=INNER_LR, inner_steps=0, optimizer=sgd())
    # Settings Reptile's update would silently ignore (step sizes) or turn useless (a body that
    # never moves) are refused, naming the algorithm that does it.
    with pytest.raises(ValueError, match=r"learned step sizes no gradient.*drop \+algorithm.learn_inner_lr=true \(or set it false\), or use algorithm=metasgd"):
        make(Reptile, learn_inner_lr=True)
    with pytest.raises(ValueError, match="body would keep its random initialisation.*or use algorithm=anil"):
        make(Reptile, adapt_head_only=True)


@pytest.mark.parametrize(
    "cls,kw", [(MAML, {}), (MAML, {"first_order": True}), (MetaSGD, {}), (ANIL, {}), (Reptile, {})]
)
def test_vmap_and_loop_agree(sinusoid_episode, cls, kw):
    g_vmap = meta_grads(make(cls, vectorize="true", **kw), sinusoid_episode)
    g_loop = meta_grads(make(cls, vectorize="false", **kw), sinusoid_episode)
    assert g_vmap.keys() == g_loop.keys() and g_vmap
    for k in g_vmap:
        torch.testing.assert_close(g_vmap[k], g_loop[k], rtol=1e-9, atol=1e-12)
    # The evaluation path (all inner steps recorded) agrees too.
    a = make(cls, vectorize="true", **kw).query_outputs(sinusoid_episode, 3, True, all_steps=True)
    b = make(cls, vectorize="false", **kw).query_outputs(sinusoid_episode, 3, True, all_steps=True)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("cls,kw", [(MAML, {}), (MAML, {"first_order": True}), (MetaSGD, {}), (ANIL, {})])
def test_task_chunks_form_the_whole_meta_batchs_gradient(sinusoid_episode, cls, kw):
    """``task_chunk``: chunks of tasks with one backward each (the last one shorter: 4 tasks in
    chunks of 3) give the hand-written loop's meta-gradient and the whole batch's loss and outputs."""
    params = {k: v.detach().requires_grad_() for k, v in make(cls, **kw).net.named_parameters()}
    lrs = None
    if cls is MetaSGD:  # alphas start at INNER_LR: the reference's scalar step
        lrs = {k: torch.full_like(v, INNER_LR) for k, v in params.items()}
    keys = [k for k in params if k.startswith("head.")] if cls is ANIL else None
    reference_meta_loss(params, sinusoid_episode, lrs, keys, first_order=kw.get("first_order", False)).backward()
    whole = make(cls, vectorize="true", **kw)
    whole_loss, whole_out = whole.meta_backward(sinusoid_episode)
    for chunk in (1, 3):
        learner = make(cls, vectorize="true", task_chunk=chunk, **kw)
        learner.zero_grad(set_to_none=True)
        loss, out = learner.meta_backward(sinusoid_episode)
        torch.testing.assert_close(loss, whole_loss, rtol=1e-12, atol=0)
        torch.testing.assert_close(out, whole_out, rtol=1e-12, atol=0)
        for k, p in learner.net.named_parameters():
            torch.testing.assert_close(p.grad, params[k].grad, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="algorithm.task_chunk must be a number of tasks >= 1"):
        make(cls, task_chunk=0, **kw)


@pytest.mark.parametrize("cls", [MAML, ANIL, MetaSGD])
@pytest.mark.parametrize("vectorize", ["true", "false"])
def test_zero_head_is_the_learner_with_its_head_set_to_zero(sinusoid_episode, cls, vectorize):
    """``zero_head`` equals the same learner whose head parameters hold zeros (float64): same
    query outputs and body meta-gradients; the head, whose values are replaced, gets none."""
    zeroed = make(cls, vectorize=vectorize, zero_head=True)
    ref = make(cls, vectorize=vectorize)
    with torch.no_grad():
        ref.net.head.weight.zero_()
        ref.net.head.bias.zero_()
    torch.testing.assert_close(zeroed.query_outputs(sinusoid_episode, 3, False, all_steps=True),
                               ref.query_outputs(sinusoid_episode, 3, False, all_steps=True), rtol=1e-10, atol=1e-12)
    g, g_ref = meta_grads(zeroed, sinusoid_episode), meta_grads(ref, sinusoid_episode)
    assert not any(k.startswith("net.head.") for k in g) and any(k.startswith("net.head.") for k in g_ref)
    for k in g:
        torch.testing.assert_close(g[k], g_ref[k], rtol=1e-10, atol=1e-12)
    # The body's gradient is not zero: the test can tell a broken inner loop from this one.
    assert g["net.body.0.weight"].abs().max() > 1e-8


@pytest.mark.parametrize("cls", [MAML, ANIL, Reptile])
@pytest.mark.parametrize("vectorize", ["true", "false"])
def test_zero_head_takes_each_episodes_ways(cls, vectorize):
    """A zero head is sized by the episode, not the network: a learner whose head has 5 outputs
    gives a 7-way episode the outputs and body meta-gradients of the same learner built with a
    7-output head (float64), so it can meta-train on more ways than it is tested on."""
    from metaft.data.episode import Episode

    def build(out: int):
        torch.manual_seed(0)
        net = MLP(4, (6, 5), 8).double()  # the same body for both (same seed)
        net.head = torch.nn.Linear(5, out).double()  # `out` outputs; a zero head never reads its values
        return cls(net=net, task="classification", inner_lr=0.3, inner_steps=STEPS, optimizer=sgd(),
                   vectorize=vectorize, zero_head=True).double()

    g = torch.Generator().manual_seed(1)
    labels = torch.arange(7).repeat(3, 2)  # 3 tasks, 2 shots of 7 classes
    episode = Episode(torch.randn(3, 14, 4, generator=g, dtype=torch.float64), labels,
                      torch.randn(3, 14, 4, generator=g, dtype=torch.float64), labels.flip(-1))
    small, exact = build(5), build(7)
    out = small.query_outputs(episode, 3, False, all_steps=True)
    assert out.shape[-1] == 7
    torch.testing.assert_close(out, exact.query_outputs(episode, 3, False, all_steps=True), rtol=1e-10, atol=1e-12)
    g_small, g_exact = meta_grads(small, episode), meta_grads(exact, episode)
    assert set(g_small) == set(g_exact) and not any(k.startswith("net.head.") for k in g_small)
    for k in g_small:
        torch.testing.assert_close(g_small[k], g_exact[k], rtol=1e-10, atol=1e-12)
    assert g_small["net.body.0.weight"].abs().max() > 1e-8


def test_batched_forward_equals_the_module_task_by_task():
    """The bmm forward of Linear/ReLU models equals ``functional_call`` of each task's own
    parameters, or of the parameters shared by all tasks (float64); modules with other layers get
    None (and vmap)."""
    from torch.func import functional_call

    from metaft.models import Conv4
    from metaft.models.nets import batched_forward

    torch.manual_seed(0)
    for module in (MLP(3, (7, 5), 2).double(), torch.nn.Linear(4, 3).double(),
                   torch.nn.Sequential(torch.nn.Linear(4, 3, bias=False), torch.nn.ReLU()).double()):
        params = {k: v.detach() + 0.1 * torch.randn(4, *v.shape, dtype=v.dtype) for k, v in module.named_parameters()}
        x = torch.randn(4, 6, next(module.parameters()).shape[-1], dtype=torch.float64)  # first layer's inputs
        out = batched_forward(module)(params, x)
        for t in range(4):
            torch.testing.assert_close(out[t], functional_call(module, {k: v[t] for k, v in params.items()}, (x[t],)),
                                       rtol=1e-12, atol=1e-12)
        shared = {k: v[0] for k, v in params.items()}
        torch.testing.assert_close(batched_forward(module)(shared, x), functional_call(module, shared, (x,)), rtol=1e-12, atol=1e-12)
    assert batched_forward(Conv4()) is None


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@pytest.mark.parametrize("shared", [True, False])
def test_batched_gradient_equals_autograd_to_second_order(loss, shared):
    """The written-out backpropagation of Linear/ReLU models gives autograd's gradient of the
    summed per-task mean loss, and its own gradient (a Hessian-vector product, what MAML's outer
    pass takes) equals autograd's double backward (float64). ``shared``: the start point, one
    parameter set for all tasks (no task dimension)."""
    from metaft.models import Conv4
    from metaft.models.nets import batched_forward, batched_gradient

    torch.manual_seed(0)
    tasks, n = 4, 6
    for module in (MLP(3, (7, 5), 2).double(), torch.nn.Linear(4, 3).double(),
                   torch.nn.Sequential(torch.nn.Linear(4, 5, bias=False), torch.nn.ReLU(), torch.nn.Linear(5, 3)).double()):
        params = {k: (v.detach() if shared else v.detach() + 0.1 * torch.randn(tasks, *v.shape, dtype=v.dtype)).requires_grad_()
                  for k, v in module.named_parameters()}
        x = torch.randn(tasks, n, next(module.parameters()).shape[-1], dtype=torch.float64)
        out = batched_forward(module)(params, x)
        if loss == "mse":
            y = torch.randn_like(out)
            value = sum(F.mse_loss(out[t], y[t]) for t in range(tasks))
        else:
            y = torch.randint(0, out.shape[-1], (tasks, n))
            value = sum(F.cross_entropy(out[t], y[t]) for t in range(tasks))
        keys = list(params)
        ref = torch.autograd.grad(value, [params[k] for k in keys], create_graph=True)
        mine = batched_gradient(module, loss)(params, x, y)
        assert set(mine) == set(keys)
        for k, r in zip(keys, ref):
            # Shared parameters: one gradient per task, whose sum is autograd's.
            torch.testing.assert_close(mine[k].sum(0) if shared else mine[k], r, rtol=1e-10, atol=1e-12)
        vs = {k: torch.randn_like(r) for k, r in zip(keys, ref)}
        hvp_ref = torch.autograd.grad(sum((r * vs[k]).sum() for k, r in zip(keys, ref)), [params[k] for k in keys])
        hvp = torch.autograd.grad(sum(((mine[k].sum(0) if shared else mine[k]) * vs[k]).sum() for k in keys),
                                  [params[k] for k in keys])
        assert any(h.abs().max() > 1e-6 for h in hvp_ref)
        for a, b in zip(hvp, hvp_ref):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert batched_gradient(Conv4(), "mse") is None


@pytest.mark.parametrize("vectorize", ["true", "false"])
def test_anil_joint_forward_adapts_the_head_on_whole_episode_features(vectorize):
    """ANIL with ``joint_forward``: the body sees support and query as one batch (batch norm over
    the episode), then the head takes plain SGD steps on those support features (float64, by hand);
    full MAML refuses the option, since its query pass needs the adapted body."""
    from metaft.data import Episode
    from metaft.models import Conv4

    g = torch.Generator().manual_seed(1)
    ep = Episode(torch.rand(2, 6, 1, 16, 16, generator=g, dtype=torch.float64), torch.arange(3).repeat(2).expand(2, 6),
                 torch.rand(2, 9, 1, 16, 16, generator=g, dtype=torch.float64), torch.arange(3).repeat(3).expand(2, 9))
    torch.manual_seed(0)
    learner = ANIL(net=Conv4(1, 16, 4, 3).double(), task="classification", inner_lr=0.5, inner_steps=2,
                   joint_forward=True, vectorize=vectorize, optimizer=sgd()).double()
    out = learner.query_outputs(ep, 2, False)
    body, head = learner.net.body, learner.net.head
    for t in range(2):
        f = body(torch.cat([ep.support_x[t], ep.query_x[t]]))
        fs, fq = f[:6], f[6:]
        w, b = head.weight, head.bias
        for _ in range(2):
            gw, gb = torch.autograd.grad(F.cross_entropy(F.linear(fs, w, b), ep.support_y[t]), [w, b], create_graph=True)
            w, b = w - 0.5 * gw, b - 0.5 * gb
        torch.testing.assert_close(out[t], F.linear(fq, w, b), rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="joint_forward=true needs a body that stays fixed"):
        MAML(net=MLP(), task="regression", joint_forward=True)


def test_anil_per_example_body_one_pass_equals_loop():
    """A body without batch norm runs all tasks' examples in one plain pass on the batched path;
    a BatchNorm body keeps per-task statistics under vmap. Both equal the loop (float64)."""
    from metaft.data import Episode
    from metaft.models import Conv4

    g = torch.Generator().manual_seed(2)
    ep = Episode(torch.rand(3, 6, 1, 16, 16, generator=g, dtype=torch.float64), torch.arange(3).repeat(2).expand(3, 6),
                 torch.rand(3, 9, 1, 16, 16, generator=g, dtype=torch.float64), torch.arange(3).repeat(3).expand(3, 9))
    for bn in ("none", "transductive"):
        grads = []
        for vectorize in ("true", "false"):
            torch.manual_seed(0)
            learner = ANIL(net=Conv4(1, 16, 4, 3, bn=bn).double(), task="classification", inner_lr=0.5, inner_steps=2,
                           vectorize=vectorize, optimizer=sgd()).double()
            grads.append(meta_grads(learner, ep))
        for k in grads[0]:
            torch.testing.assert_close(grads[0][k], grads[1][k], rtol=1e-9, atol=1e-12, msg=f"{bn} {k}")


@pytest.mark.parametrize("vectorize", ["true", "false"])
def test_eval_inner_lr_applies_at_evaluation_only(sinusoid_episode, vectorize):
    """``eval_inner_lr`` is the step size in eval mode (validation, test) and ``inner_lr`` in
    training: each mode's outputs equal a learner built with that step size alone (float64)."""
    both = make(MAML, vectorize=vectorize, eval_inner_lr=0.2)
    train_ref, eval_ref = make(MAML, vectorize=vectorize), make(MAML, vectorize=vectorize)
    eval_ref.inner_lr = eval_ref.eval_inner_lr = 0.2
    for mode, ref in ((True, train_ref), (False, eval_ref)):
        both.train(mode), ref.train(mode)
        torch.testing.assert_close(both.query_outputs(sinusoid_episode, 2, True, all_steps=True),
                                   ref.query_outputs(sinusoid_episode, 2, True, all_steps=True), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(train_ref.query_outputs(sinusoid_episode, 2, True), eval_ref.query_outputs(sinusoid_episode, 2, True))
    with pytest.raises(ValueError, match="Meta-SGD learns its step sizes"):
        make(MetaSGD, eval_inner_lr=0.2)


@pytest.mark.parametrize("vectorize, bn", [("false", "transductive"), ("true", "transductive"), ("true", "none")])
def test_feature_scale_makes_one_anil_step_a_nearest_mean_classifier(vectorize, bn):
    """``model.feature_scale``: features on a sphere of the learned radius. One ANIL step from a
    zero head then gives the logits written out by hand (lr times the centred one-hot labels times
    the support features, over the support size), which rank the classes by Euclidean distance to
    the support features on the sphere; the scale's meta-gradient matches finite differences. On the
    looped, the vmapped and (no batch norm) the one-pass batched path."""
    from metaft.data import Episode
    from metaft.models import Conv4

    g = torch.Generator().manual_seed(3)
    ep = Episode(torch.rand(2, 3, 1, 16, 16, generator=g, dtype=torch.float64), torch.arange(3).expand(2, 3),
                 torch.rand(2, 9, 1, 16, 16, generator=g, dtype=torch.float64), torch.arange(3).repeat(3).expand(2, 9))
    torch.manual_seed(0)
    learner = ANIL(net=Conv4(1, 16, 4, 3, bn=bn, feature_scale=2.5).double(), task="classification", inner_lr=0.5,
                   inner_steps=1, zero_head=True, vectorize=vectorize, optimizer=sgd()).double()
    body, scale = learner.net.body, learner.net.body[-1].scale

    def hand_logits() -> list[torch.Tensor]:
        out = []
        for t in range(2):
            fs, fq = (F.normalize(body[:-1](x), dim=-1) * scale for x in (ep.support_x[t], ep.query_x[t]))
            centred = F.one_hot(ep.support_y[t], 3).double() - 1 / 3  # minus the softmax of a zero head
            w = 0.5 * centred.T @ fs / 3                               # one step on the mean support loss
            out.append(fq @ w.T)
        return out

    out, ref = learner.query_outputs(ep, 1, False), hand_logits()
    for t in range(2):
        torch.testing.assert_close(out[t], ref[t], rtol=1e-10, atol=1e-10)
        fs, fq = F.normalize(body[:-1](ep.support_x[t]), dim=-1), F.normalize(body[:-1](ep.query_x[t]), dim=-1)
        assert torch.equal(out[t].argmax(-1), torch.cdist(fq, fs).argmin(-1))
    assert torch.allclose(body(ep.query_x[0]).norm(dim=-1), torch.full((9,), 2.5, dtype=torch.float64))
    grad = meta_grads(learner, ep)["net.body.5.scale"]
    loss = lambda: torch.stack([F.cross_entropy(o, ep.query_y[t]) for t, o in enumerate(hand_logits())]).mean()
    with torch.no_grad():
        (fd,) = finite_difference(loss, [scale])
    torch.testing.assert_close(grad, fd, rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="model.feature_scale must be null or a positive number"):
        Conv4(feature_scale=0.0)


class _RunningBatchNormNet(MetaNet):
    """An MLP with a batch-norm layer that keeps running statistics (as ``model.bn=running``)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(1, 6), torch.nn.BatchNorm1d(6), torch.nn.ReLU())
        self.feature_dim = 6
        self.head = torch.nn.Linear(6, 1)


def test_running_batch_norm_statistics_loop_over_tasks_and_survive_logging(sinusoid_episode):
    """Running statistics can be updated task by task only in a loop: ``vectorize=auto`` loops
    (it vmaps the same model without them), ``true`` is refused naming both settings, and the
    training logs' second pass through the inner loop leaves them as the meta-step left them."""
    torch.manual_seed(0)
    plain = MAML(net=MLP(1, (6,), 1), task="regression", optimizer=sgd())
    learner = MAML(net=_RunningBatchNormNet(), task="regression", optimizer=sgd()).double()
    assert plain.use_vmap() and not learner.use_vmap()
    with pytest.raises(ValueError, match="algorithm.vectorize=true cannot update .*model.bn=running.*"
                                         "set algorithm.vectorize=auto or false"):
        MAML(net=_RunningBatchNormNet(), task="regression", vectorize="true", optimizer=sgd())

    bn = learner.net.body[1]
    learner.meta_backward(sinusoid_episode)
    after_step = [b.clone() for b in bn.buffers()]
    assert int(bn.num_batches_tracked) > 0
    learner.log_training_details(sinusoid_episode)
    for b, expected in zip(bn.buffers(), after_step):
        torch.testing.assert_close(b, expected, rtol=0, atol=0)
    learner.adaptation_curve(sinusoid_episode, STEPS)  # what the log pass would have done to them
    assert int(bn.num_batches_tracked) > int(after_step[2])


@pytest.mark.parametrize("value", [-1.0, True, "1"])
def test_bad_grad_clip_is_refused(value):
    with pytest.raises(ValueError, match="algorithm.grad_clip must be a norm >= 0 \\(0 disables clipping\\)"):
        make(MAML, grad_clip=value)
