"""Inductive batch norm: a query's prediction depends on the support set and itself only."""
from __future__ import annotations

import pytest
import torch

from metaft.algorithms import ANIL, MAML, ProtoNet, Reptile
from metaft.data.episode import Episode
from metaft.models import Conv4
from tests.conftest import sgd


def episode(seed: int, ways: int = 3, queries: int = 4) -> Episode:
    g = torch.Generator().manual_seed(seed)
    sx = torch.rand(2, ways, 1, 16, 16, generator=g, dtype=torch.float64)
    qx = torch.rand(2, ways * queries, 1, 16, 16, generator=g, dtype=torch.float64)
    sy = torch.arange(ways).expand(2, -1)
    return Episode(sx, sy, qx, torch.arange(ways).repeat_interleave(queries).expand(2, -1))


def outputs(cls, bn: str, ep: Episode, vectorize: str) -> torch.Tensor:
    torch.manual_seed(0)
    net = Conv4(in_channels=1, image_size=16, filters=4, out_features=3, bn=bn).double()
    kw = {} if cls is ProtoNet else {"inner_lr": 0.3, "inner_steps": 2}
    learner = cls(net=net, task="classification", optimizer=sgd(), vectorize=vectorize, **kw).double()
    with torch.enable_grad():
        return learner.query_outputs(ep, learner.eval_inner_steps, first_order=True, all_steps=True).detach()


@pytest.mark.parametrize("cls", [MAML, ANIL, Reptile, ProtoNet])
@pytest.mark.parametrize("vectorize", ["true", "false"])
def test_inductive_batch_norm_scores_each_query_alone(cls, vectorize):
    ep = episode(0)
    other = episode(1)
    # The same support sets and first query; every other query replaced.
    changed = Episode(ep.support_x, ep.support_y, torch.cat([ep.query_x[:, :1], other.query_x[:, 1:]], 1), ep.query_y)
    a, b = outputs(cls, "inductive", ep, vectorize), outputs(cls, "inductive", changed, vectorize)
    torch.testing.assert_close(a[..., 0, :], b[..., 0, :], rtol=1e-10, atol=1e-12)
    # Support statistics, not a no-op: the support rows' own outputs are those of transductive
    # batch norm over the support set, and with transductive batch norm the first query moves.
    t_a, t_b = outputs(cls, "transductive", ep, vectorize), outputs(cls, "transductive", changed, vectorize)
    assert (t_a[..., 0, :] - t_b[..., 0, :]).abs().max() > 1e-6
    assert (a[..., 0, :] - t_a[..., 0, :]).abs().max() > 1e-6


def test_inductive_query_is_normalised_with_the_support_statistics():
    """A hand-written reference: each query through the body alone, every batch norm using the
    mean and (biased) variance of the support set's activations at that layer."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    net = Conv4(in_channels=1, image_size=16, filters=4, out_features=3, bn="inductive").double()
    ep = episode(0)
    learner = ProtoNet(net=net, task="classification", optimizer=sgd()).double()
    fs, fq = learner.episode_features(learner.net_params(), ep.support_x[0], ep.query_x[0])

    def by_hand(x_support: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        s, q = x_support, x
        for block in net.body[:4]:
            conv, bn = block[0], block[1]
            s, q = F.conv2d(s, conv.weight, conv.bias, padding=1), F.conv2d(q, conv.weight, conv.bias, padding=1)
            mean, var = s.mean((0, 2, 3), keepdim=True), s.var((0, 2, 3), unbiased=False, keepdim=True)
            w, b = bn.weight.view(1, -1, 1, 1), bn.bias.view(1, -1, 1, 1)
            s = F.max_pool2d(F.relu((s - mean) / torch.sqrt(var + bn.eps) * w + b), 2)
            q = F.max_pool2d(F.relu((q - mean) / torch.sqrt(var + bn.eps) * w + b), 2)
        return q.flatten(1)

    torch.testing.assert_close(fq[1:2], by_hand(ep.support_x[0], ep.query_x[0][1:2]), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fs, by_hand(ep.support_x[0], ep.support_x[0]), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("trained, scored, refused", [
    ("transductive", "inductive", None), ("inductive", "transductive", None), ("running", "running", None),
    ("running", "inductive", "already inductive"), ("transductive", "running", "no running statistics"),
    ("none", "inductive", "different batch-norm layers"), ("inductive", "none", "different batch-norm layers"),
])
def test_eval_refuses_batch_norm_modes_the_checkpoint_cannot_take(trained, scored, refused):
    from metaft.stages.meta import check_batch_norm

    if refused is None:
        check_batch_norm({"bn": trained}, {"bn": scored})
        return
    with pytest.raises(ValueError, match=f"model.bn={scored} cannot score a checkpoint trained with model.bn={trained}.*{refused}"):
        check_batch_norm({"bn": trained}, {"bn": scored})
