"""ResNet-12: the architecture against a hand-written functional forward, MAML's second-order
meta-gradient through it against plain autograd on that forward and finite differences (float64),
DropBlock, and every learner running on it."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from metaft.algorithms import (
    ANIL,
    MAML,
    MetaOptNet,
    MetaSGD,
    Pretrain,
    ProtoNet,
    Reptile,
)
from metaft.data.episode import Episode
from metaft.models import ResNet12
from metaft.models.resnet12 import DropBlock
from tests.conftest import sgd

WIDTHS, SIZE, WAYS = (3, 4, 4, 5), 16, 3
INNER_LR, STEPS = 0.1, 2


def leaky(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.1)


def reference_forward(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """ResNet-12 written out from its description: per block conv-bn-leaky twice, conv-bn, plus a
    1x1 conv-bn shortcut, leaky, 2x2 max-pool; global average; linear head. Batch statistics."""

    def bn(h: torch.Tensor, name: str) -> torch.Tensor:
        return F.batch_norm(h, None, None, p[f"{name}.weight"], p[f"{name}.bias"], training=True)

    h = x
    for b in range(4):
        k = f"body.{b}."
        out = leaky(bn(F.conv2d(h, p[k + "conv1.weight"], padding=1), k + "bn1"))
        out = leaky(bn(F.conv2d(out, p[k + "conv2.weight"], padding=1), k + "bn2"))
        out = bn(F.conv2d(out, p[k + "conv3.weight"], padding=1), k + "bn3")
        short = bn(F.conv2d(h, p[k + "shortcut.0.weight"]), k + "shortcut.1")
        h = F.max_pool2d(leaky(out + short), 2)
    return F.linear(h.mean((2, 3)), p["head.weight"], p["head.bias"])


def make_net() -> ResNet12:
    torch.manual_seed(0)
    net = ResNet12(in_channels=3, image_size=SIZE, channels=WIDTHS, out_features=WAYS).double()
    with torch.no_grad():  # batch norm's affine parameters away from (1, 0), so their gradients matter
        for name, p in net.named_parameters():
            if ".bn" in name or "shortcut.1" in name:
                p.add_(torch.randn_like(p) * 0.2)
    return net


@pytest.fixture
def episode() -> Episode:
    g = torch.Generator().manual_seed(1)
    n, s, q = 3, 2, 2
    return Episode(torch.randn(n, WAYS * s, 3, SIZE, SIZE, generator=g, dtype=torch.float64),
                   torch.arange(WAYS).repeat_interleave(s).expand(n, -1).contiguous(),
                   torch.randn(n, WAYS * q, 3, SIZE, SIZE, generator=g, dtype=torch.float64),
                   torch.arange(WAYS).repeat_interleave(q).expand(n, -1).contiguous())


def reference_meta_loss(params: dict[str, torch.Tensor], ep: Episode, create_graph: bool = True) -> torch.Tensor:
    """Mean query loss after STEPS hand-written SGD steps per task, differentiated by plain autograd."""
    losses = []
    for t in range(ep.num_tasks):
        p = dict(params)
        for _ in range(STEPS):
            loss = F.cross_entropy(reference_forward(p, ep.support_x[t]), ep.support_y[t])
            grads = torch.autograd.grad(loss, list(p.values()), create_graph=create_graph)
            p = {k: v - INNER_LR * g for (k, v), g in zip(p.items(), grads)}
        losses.append(F.cross_entropy(reference_forward(p, ep.query_x[t]), ep.query_y[t]))
    return torch.stack(losses).mean()


def test_forward_is_the_described_architecture(episode):
    net = make_net()
    params = dict(net.named_parameters())
    torch.testing.assert_close(net(episode.support_x[0]), reference_forward(params, episode.support_x[0]))
    assert sum(1 for m in net.modules() if isinstance(m, torch.nn.Conv2d)) == 16  # 12 3x3 + 4 shortcuts


def test_paper_sizes():
    net = ResNet12()  # 64-160-320-640 at 84 px
    assert net.feature_dim == 640
    # 12.4M parameters as reported for MetaOptNet's ResNet-12 (its body; the head is the episode's)
    body = sum(p.numel() for p in net.body.parameters())
    assert 12.3e6 < body < 12.5e6, body
    flat = ResNet12(image_size=84, channels=(4, 4, 4, 8), global_pool=False)
    assert flat.feature_dim == 8 * 5 * 5  # 84 -> 42 -> 21 -> 10 -> 5
    assert flat(torch.zeros(2, 3, 84, 84)).shape == (2, 5)
    cifar = ResNet12(image_size=32, channels=(4, 4, 4, 8), global_pool=False)
    assert cifar.feature_dim == 8 * 2 * 2


@pytest.mark.parametrize("kw", [{"vectorize": "true"}, {"vectorize": "false"}, {"vectorize": "true", "task_chunk": 2}])
def test_maml_second_order_meta_gradient_matches_autograd_reference(episode, kw):
    net = make_net()
    learner = MAML(net=net, task="classification", inner_lr=INNER_LR, inner_steps=STEPS, optimizer=sgd(), **kw).double()
    learner.meta_backward(episode)
    params = dict(net.named_parameters())
    ref = torch.autograd.grad(reference_meta_loss(params, episode), list(params.values()))
    for (k, p), g in zip(params.items(), ref):
        torch.testing.assert_close(p.grad, g, rtol=1e-7, atol=1e-10, msg=k)


def test_reference_meta_gradient_matches_finite_differences(episode):
    """The reference itself, on a few entries, against central differences of the meta-loss."""
    net = make_net()
    params = {k: p.detach().clone().requires_grad_() for k, p in net.named_parameters()}
    grads = dict(zip(params, torch.autograd.grad(reference_meta_loss(params, episode), list(params.values()))))
    eps = 1e-6
    for name, idx in (("body.0.conv1.weight", (1, 2, 0, 1)), ("body.2.bn2.weight", (3,)),
                      ("body.3.shortcut.0.weight", (0, 1, 0, 0)), ("head.bias", (1,))):
        entry = params[name].data  # shifted in place; the losses are then taken with autograd on
        entry[idx] += eps
        hi = reference_meta_loss(params, episode, create_graph=False).detach()
        entry[idx] -= 2 * eps
        lo = reference_meta_loss(params, episode, create_graph=False).detach()
        entry[idx] += eps
        torch.testing.assert_close(grads[name][idx], (hi - lo) / (2 * eps), rtol=1e-5, atol=1e-8, msg=name)


def test_first_order_differs_and_matches_detached_reference(episode):
    net = make_net()
    learner = MAML(net=net, task="classification", inner_lr=INNER_LR, inner_steps=STEPS, first_order=True,
                   optimizer=sgd()).double()
    learner.meta_backward(episode)
    params = dict(net.named_parameters())
    total = {k: torch.zeros_like(p) for k, p in params.items()}
    for t in range(episode.num_tasks):  # first order: the query gradient at the adapted weights
        p = {k: v.detach() for k, v in params.items()}
        for _ in range(STEPS):
            p = {k: v.requires_grad_() for k, v in p.items()}
            loss = F.cross_entropy(reference_forward(p, episode.support_x[t]), episode.support_y[t])
            p = {k: (v - INNER_LR * g).detach() for (k, v), g in zip(p.items(), torch.autograd.grad(loss, list(p.values())))}
        p = {k: v.requires_grad_() for k, v in p.items()}
        loss = F.cross_entropy(reference_forward(p, episode.query_x[t]), episode.query_y[t])
        for k, g in zip(p, torch.autograd.grad(loss, list(p.values()))):
            total[k] += g / episode.num_tasks
    for k, p in params.items():
        torch.testing.assert_close(p.grad, total[k], rtol=1e-7, atol=1e-10, msg=k)


@pytest.mark.parametrize("cls,kw", [(ANIL, {"vectorize": "true"}), (ANIL, {}), (MetaSGD, {"vectorize": "true"}),
                                    (Reptile, {"inner_steps": 2}), (ProtoNet, {"inner_steps": 0}),
                                    (MetaOptNet, {"inner_steps": 0}), (Pretrain, {"inner_steps": 0, "eval_inner_steps": 2})])
def test_every_learner_trains_and_evaluates_resnet12(episode, cls, kw):
    net = ResNet12(in_channels=3, image_size=SIZE, channels=WIDTHS, out_features=WAYS).double()
    learner = cls(net=net, task="classification", inner_lr=0.1, optimizer=sgd(), **{"inner_steps": 1, **kw}).double()
    if cls is Pretrain:
        learner.make_classifier(7)
        x, y = episode.query_x.flatten(0, 1), episode.query_y.flatten() * 2
        loss, _ = learner.batch_backward(x, y)  # a labelled batch over all 7 training classes
    else:
        loss, _ = learner.meta_backward(episode)
    grads = [p.grad for p in net.body.parameters()]
    assert torch.isfinite(loss) and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    metric, _ = learner.adaptation_curve(episode, learner.eval_inner_steps)
    assert metric.shape[0] == episode.num_tasks and ((metric >= 0) & (metric <= 100)).all()


def test_dropblock():
    torch.manual_seed(0)
    drop = DropBlock(0.2, 3)
    x = torch.ones(8, 4, 20, 20)
    assert torch.equal(drop.eval()(x), x)
    y = drop.train()(x)
    zero = (y == 0).float().mean()
    assert 0.12 < zero < 0.28  # about drop_rate of the map, in blocks
    assert torch.allclose(y.sum(), x.sum(), rtol=1e-5)  # rescaled to keep the mean
    # blocks: a zeroed pixel's 3x3 neighbourhood holds other zeros
    z = (y[0, 0] == 0).float()
    neighbours = F.conv2d(z[None, None], torch.ones(1, 1, 3, 3), padding=1)[0, 0]
    assert (neighbours[z > 0] >= 3).all()
    with pytest.raises(RuntimeError, match="algorithm.vectorize=false"):
        torch.func.vmap(drop)(x[:, None])


def test_dropblock_ramp():
    """MetaOptNet's and RFS's schedule: the rate grows linearly from 0 to drop_rate over the ramp."""
    x = torch.ones(16, 8, 20, 20)

    def dropped(step):
        drop = DropBlock(0.2, 3, ramp_steps=100).train()
        if step is not None:
            drop.set_step(step)
        torch.manual_seed(0)
        return (drop(x) == 0).float().mean().item()

    assert dropped(0) == 0.0
    assert 0.06 < dropped(50) < 0.14  # half the rate half-way
    assert 0.14 < dropped(100) < 0.26 and dropped(100) == dropped(5000) == dropped(None)  # full rate, and before any step

    # The learners tell the network the global step before every training batch (0 without a trainer).
    net = ResNet12(in_channels=1, image_size=16, channels=(2, 2, 2, 2), drop_rate=0.2, dropblock_ramp_steps=10)
    blocks = [m for m in net.modules() if isinstance(m, DropBlock)]
    assert len(blocks) == 2 and all(b.rate() == 0.2 for b in blocks)
    ProtoNet(net=net, task="classification", inner_steps=0).on_train_batch_start(None, 0)
    assert all(b.rate() == 0.0 for b in blocks)
    net.set_training_step(5)
    assert all(b.rate() == pytest.approx(0.1) for b in blocks)
    # The first two blocks drop single units at the full rate (the reference code's F.dropout).
    drops = [b.drop for b in net.body[:2]]
    assert all(isinstance(d, torch.nn.Dropout) and d.p == 0.2 for d in drops)
    with pytest.raises(RuntimeError, match="algorithm.vectorize=false"):
        torch.func.vmap(drops[0].train())(x[:, None])


def test_bad_settings():
    with pytest.raises(ValueError, match="model.channels must be four"):
        ResNet12(channels=(4, 4, 4))
    with pytest.raises(ValueError, match="model.image_size=8 is too small"):
        ResNet12(image_size=8)
    with pytest.raises(ValueError, match="model.drop_rate"):
        ResNet12(drop_rate=1.0)
    with pytest.raises(ValueError, match="model.dropblock_ramp_steps"):
        ResNet12(dropblock_ramp_steps=-1)


@pytest.mark.parametrize("cls", [MAML, ProtoNet])
def test_inductive_batch_norm_scores_each_query_alone(episode, cls):
    """``model.bn=inductive``: a query's output does not depend on the other queries (it does with
    transductive batch norm, which normalises the query set with its own statistics)."""
    outs = {}
    for bn in ("inductive", "transductive"):
        torch.manual_seed(0)
        net = ResNet12(in_channels=3, image_size=SIZE, channels=WIDTHS, out_features=WAYS, bn=bn).double()
        learner = cls(net=net, task="classification", inner_lr=0.1, inner_steps=1 if cls is MAML else 0,
                      optimizer=sgd()).double()
        other = Episode(episode.support_x, episode.support_y, episode.query_x.clone(), episode.query_y)
        other.query_x[:, 1:] = torch.randn_like(other.query_x[:, 1:])
        with torch.no_grad():
            a, b = (learner.query_outputs(e, learner.eval_inner_steps, first_order=True) for e in (episode, other))
        outs[bn] = (a[:, 0] - b[:, 0]).abs().max().item()
    assert outs["inductive"] < 1e-10 < outs["transductive"]
