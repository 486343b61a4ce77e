"""Baseline++ (Pretrain with the cosine classifier) and Meta-Baseline (ProtoNet with cosine
prototypes, started from a checkpoint's body) against float64 hand computations: norms, cosines
and the cosine head's gradient written out, and checkpoint files written here."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from metaft.algorithms import Pretrain, ProtoNet
from metaft.algorithms.warm_start import without_init_ckpt
from metaft.models import MLP, Conv4
from metaft.data import Episode, split_generator
from tests.gaussian_clusters import GaussianClusters
from tests.unit.test_heads import QUERIES, SHOTS, WAYS, check_meta_gradient, features_by_hand
from tests.unit.test_heads import make as make_any


@pytest.fixture
def episode() -> Episode:
    """test_heads' episode: 3 tasks, 3-way 2-shot, 4 queries per class; float64 inputs."""
    dm = GaussianClusters(ways=WAYS, shots=SHOTS, queries=QUERIES, signal_dims=3, noise_dims=3, noise=1.0)
    ep = dm.sample("train", 3, split_generator(0, "train"))
    return Episode(ep.support_x.double(), ep.support_y, ep.query_x.double(), ep.query_y)


def make(cls, **kw):
    """``test_heads.make`` with the last ReLU layer's bias raised: some inputs there map to all-zero
    features, whose direction (hence cosine) is undefined."""
    learner = make_any(cls, **kw)
    with torch.no_grad():
        learner.net.body[2].bias.add_(2.0)
    return learner


def unit(x: torch.Tensor) -> torch.Tensor:
    """Rows divided by their Euclidean length, written out (no F.normalize)."""
    return x / torch.sqrt((x * x).sum(-1, keepdim=True))


# ---------------------------------------------------------------------------------- Baseline++
@pytest.mark.parametrize("learn_scale", [False, True])
def test_baselinepp_training_is_cosine_classification(learn_scale):
    learner = make(Pretrain, classifier="cosine", scale=3.0, learn_scale=learn_scale)
    learner.make_classifier(7)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(10, 6, generator=g, dtype=torch.float64), torch.randint(7, (10,), generator=g)
    loss, _ = learner.batch_backward(x, y)
    p = {k.removeprefix("net."): v for k, v in learner.named_parameters()}
    scale = p["classifier.scale"] if learn_scale else 3.0
    cos = unit(features_by_hand(p, x)) @ unit(p["classifier.weight"]).T  # [10, 7]
    ref = -torch.log_softmax(scale * cos, -1)[torch.arange(10), y].mean()
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
    for (k, v), g_ref in zip(learner.named_parameters(), torch.autograd.grad(ref, list(p.values()), allow_unused=True)):
        assert (v.grad is None) == (g_ref is None), k
        if g_ref is not None:
            torch.testing.assert_close(v.grad, g_ref, rtol=1e-10, atol=1e-12, msg=k)
    # A fixed scale is saved with the weights but never trained (Chen et al.); a learned one is.
    assert ("classifier.scale" in dict(learner.named_parameters())) == learn_scale
    assert float(learner.state_dict()["classifier.scale"]) == 3.0
    if learn_scale:
        assert learner.classifier.scale.grad.abs() > 1e-6


def test_baselinepp_head_is_fitted_from_the_cosine_prototypes(episode):
    """Step 0 is the cosine-prototype head; each step is gradient descent on the mean support
    cross-entropy with the gradient through the normalisation written out, at the classifier's scale."""
    steps, lr = 3, 0.7
    learner = make(Pretrain, classifier="cosine", scale=4.0, learn_scale=True, eval_inner_steps=steps, inner_lr=lr)
    learner.make_classifier(5)
    with torch.no_grad():
        learner.classifier.scale.fill_(2.5)  # as trained: the evaluation uses this, not the initial 4
    out = learner.query_outputs(episode, steps, True, all_steps=True)
    assert out.shape == (3, steps + 1, WAYS * QUERIES, WAYS)
    p, s = dict(learner.net.named_parameters()), 2.5
    with torch.no_grad():
        for t in range(3):
            fs, fq = features_by_hand(p, episode.support_x[t]), features_by_hand(p, episode.query_x[t])
            sy = episode.support_y[t]
            y = F.one_hot(sy, WAYS).double()
            w = unit(torch.stack([fs[sy == c].mean(0) for c in range(WAYS)]))
            for k in range(steps + 1):
                torch.testing.assert_close(out[t, k], s * unit(fq) @ unit(w).T, rtol=1e-10, atol=1e-12)
                err = (torch.softmax(s * unit(fs) @ unit(w).T, -1) - y) / len(fs)  # d mean-CE / d logits
                d_u = s * err.T @ unit(fs)  # d loss / d unit(w_c)
                u, n = unit(w), torch.sqrt((w * w).sum(-1, keepdim=True))
                w = w - lr * (d_u - (d_u * u).sum(-1, keepdim=True) * u) / n  # (I - u u^T) / |w|
        # Before any training there is no classifier: the configured scale.
        fresh = make(Pretrain, classifier="cosine", scale=4.0, eval_inner_steps=0)
        out0 = fresh.query_outputs(episode, 0, True)
        fs, fq, sy = features_by_hand(p, episode.support_x[0]), features_by_hand(p, episode.query_x[0]), episode.support_y[0]
        protos = torch.stack([fs[sy == c].mean(0) for c in range(WAYS)])
        torch.testing.assert_close(out0[0], 4.0 * unit(fq) @ unit(protos).T, rtol=1e-10, atol=1e-12)


def test_baselinepp_classifier_reloads_from_a_checkpoint():
    trained = make(Pretrain, classifier="cosine", scale=3.0)
    trained.make_classifier(7)
    fresh = make(Pretrain, classifier="cosine", scale=3.0)
    fresh.load_state_dict(trained.state_dict())
    assert fresh.classifier.out_features == 7
    torch.testing.assert_close(fresh.classifier.weight, trained.classifier.weight)
    linear = make(Pretrain, eval_inner_steps=1)  # a Baseline checkpoint has a bias and no scale
    with pytest.raises(RuntimeError, match="classifier.bias"):
        linear.load_state_dict(trained.state_dict())


# ------------------------------------------------------------------------------- Meta-Baseline
def test_metabaseline_logits_are_scaled_cosines_to_the_prototypes(episode):
    learner = make(ProtoNet, distance="cosine", scale_init=2.5)
    out = learner.query_outputs(episode, 0, False, all_steps=True)
    assert out.shape == (3, 1, WAYS * QUERIES, WAYS)
    p = dict(learner.net.named_parameters())

    def by_hand(fs: torch.Tensor, sy: torch.Tensor, fq: torch.Tensor) -> torch.Tensor:
        protos = [torch.stack([fs[i] for i in range(len(sy)) if sy[i] == k]).mean(0) for k in range(WAYS)]
        return learner.scale * torch.stack([
            torch.stack([(q * c).sum() / torch.sqrt((q * q).sum() * (c * c).sum()) for c in protos]) for q in fq])

    for t in range(3):
        ref = by_hand(features_by_hand(p, episode.support_x[t]), episode.support_y[t], features_by_hand(p, episode.query_x[t]))
        torch.testing.assert_close(out[t, 0], ref.detach(), rtol=1e-10, atol=1e-10)
    assert float(learner.scale) == 2.5 and float(make(ProtoNet, distance="cosine").scale) == 10.0
    check_meta_gradient(learner, episode, by_hand)  # the body and the learned scale
    assert learner.scale.grad.abs() > 1e-6


def save_checkpoint(path, learner, model_cfg: dict) -> None:
    """What ``metaft.checkpoint.load`` reads from a Lightning checkpoint."""
    torch.save({"state_dict": learner.state_dict(), "metaft_config": {"model": model_cfg}}, path)


@pytest.mark.parametrize("arch", ["mlp", "conv4_running_bn"])
def test_init_ckpt_starts_from_the_checkpoints_body(tmp_path, arch):
    def net():
        if arch == "mlp":
            return MLP(6, (5, 4), WAYS)
        return Conv4(1, 16, 4, WAYS, bn="running")  # batch-norm running statistics are part of the body

    torch.manual_seed(1)
    stage1 = Pretrain(net=net(), task="classification", classifier="cosine", eval_inner_steps=1).double()
    stage1.make_classifier(11)
    with torch.no_grad():
        for t in stage1.net.body.state_dict().values():  # weights and running statistics unlike a fresh module's
            t.add_(3 if t.dtype == torch.long else 0.5)
    path = tmp_path / "best.ckpt"
    save_checkpoint(path, stage1, {"_target_": "metaft.models.MLP"})
    torch.manual_seed(2)  # another initialisation, so a body that was not loaded differs
    own = net().double()
    before = {k: v.clone() for k, v in own.body.state_dict().items()}
    head = own.head.weight.detach().clone()
    learner = ProtoNet(net=own, task="classification", distance="cosine", init_ckpt=str(path))
    want = {k[len("net.body."):]: v for k, v in stage1.state_dict().items() if k.startswith("net.body.")}
    got = learner.net.body.state_dict()
    assert set(got) == set(want) and all(not torch.equal(before[k], want[k]) for k in want)
    for k, v in want.items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=0, msg=k)
    # Only the body: the network's own head (unused by the learner) keeps its initialisation.
    torch.testing.assert_close(learner.net.head.weight, head, rtol=0, atol=0)


def test_init_ckpt_of_another_architecture_is_refused_naming_both(tmp_path):
    torch.manual_seed(0)
    wide = Pretrain(net=MLP(6, (5, 8), WAYS), task="classification", eval_inner_steps=1)
    path = tmp_path / "wide.ckpt"
    save_checkpoint(path, wide, {"_target_": "metaft.models.MLP", "hidden": [5, 8]})
    with pytest.raises(ValueError) as err:
        ProtoNet(net=MLP(6, (5, 4), WAYS), task="classification", init_ckpt=str(path))
    msg = str(err.value)
    assert f"algorithm.init_ckpt={path} is a checkpoint of another architecture" in msg
    assert "body.2.weight: model (4, 5) vs checkpoint (8, 5)" in msg
    assert "model of this run: metaft.models.nets.MLP" in msg and "checkpoint's model: {'_target_': 'metaft.models.MLP', 'hidden': [5, 8]}" in msg
    with pytest.raises(FileNotFoundError, match="algorithm.init_ckpt=.*no such checkpoint file"):
        ProtoNet(net=MLP(6, (5, 4), WAYS), task="classification", init_ckpt=str(tmp_path / "missing.ckpt"))


def test_evaluation_rebuilds_without_the_runs_starting_point():
    stored = {"algorithm": {"init_ckpt": "/gone/best.ckpt", "distance": "cosine"}}
    cfg = OmegaConf.create(stored)
    assert without_init_ckpt(cfg).algorithm == {"init_ckpt": None, "distance": "cosine"}
    assert without_init_ckpt(stored)["algorithm"] == {"init_ckpt": None, "distance": "cosine"}
    # The stored configs are left as they were.
    assert cfg.algorithm.init_ckpt == stored["algorithm"]["init_ckpt"] == "/gone/best.ckpt"


def test_study_loads_a_metabaseline_checkpoint_whose_start_is_gone(tmp_path):
    from metaft.core.objective import Objective
    from metaft.study.evaluate import Init

    torch.manual_seed(0)
    trained = ProtoNet(net=MLP(6, (5, 4), WAYS), task="classification", distance="cosine")
    with torch.no_grad():
        trained.scale.fill_(7.0)
    config = {"model": {"_target_": "metaft.models.MLP", "in_features": 6, "hidden": [5, 4], "out_features": WAYS},
              "algorithm": {"_target_": "metaft.algorithms.ProtoNet", "distance": "cosine",
                            "init_ckpt": str(tmp_path / "gone.ckpt")}}
    torch.save({"state_dict": trained.state_dict(), "metaft_config": config}, tmp_path / "metabaseline.ckpt")
    init = Init("metabaseline", 0, tmp_path / "metabaseline.ckpt", OmegaConf.create({"adapt": {"bn": "inductive"}}),
                Objective("classification"))
    assert float(init.learner.scale) == 7.0
    torch.testing.assert_close(init.net.body[0].weight, trained.net.body[0].weight, rtol=0, atol=0)


def test_options_for_the_other_variant_are_refused():
    with pytest.raises(ValueError, match="algorithm.classifier must be 'linear' .* or 'cosine'"):
        make(Pretrain, classifier="arcface", eval_inner_steps=1)
    with pytest.raises(ValueError, match="set algorithm.classifier=cosine"):
        make(Pretrain, scale=5.0, eval_inner_steps=1)
    with pytest.raises(ValueError, match="algorithm.scale must be > 0"):
        make(Pretrain, classifier="cosine", scale=0.0)
    with pytest.raises(ValueError, match="algorithm.eval_inner_steps > 0"):  # a zero linear head scores nothing
        make(Pretrain, eval_inner_steps=0)
    with pytest.raises(ValueError, match="algorithm.distance must be 'euclidean' .* or 'cosine'"):
        make(ProtoNet, distance="manhattan")
    with pytest.raises(ValueError, match="set algorithm.distance=cosine"):
        make(ProtoNet, scale_init=10.0)
    with pytest.raises(ValueError, match="algorithm.scale_init must be > 0"):
        make(ProtoNet, distance="cosine", scale_init=-1.0)


def test_rfs_probe_at_evaluation_matches_sklearn(episode):
    """``eval_head=logistic``: each task's predictions are scikit-learn's LogisticRegression (C=1,
    intercept) fitted to the L2-normalised support features, which RFS uses at test."""
    sklearn = pytest.importorskip("sklearn.linear_model")
    torch.manual_seed(0)
    learner = Pretrain(net=MLP(6, (5, 8), WAYS).double(), task="classification", eval_head="logistic",
                       eval_inner_steps=None)
    learner.eval()
    with torch.no_grad():
        out = learner.query_outputs(episode, 0, first_order=True, all_steps=True)
    assert out.shape == (episode.num_tasks, 1, WAYS * QUERIES, WAYS)
    for t in range(episode.num_tasks):
        with torch.no_grad():
            fs, fq = learner.net.body(episode.support_x[t]), learner.net.body(episode.query_x[t])
        ref = sklearn.LogisticRegression(C=1.0, tol=1e-12, max_iter=100_000).fit(unit(fs).numpy(), episode.support_y[t].numpy())
        want = torch.from_numpy(ref.predict_proba(unit(fq).numpy()))
        torch.testing.assert_close(torch.softmax(out[t, 0], -1), want, rtol=0, atol=1e-5)
    # Through the evaluation path with the gradient head's default 100 steps: one set of logits, the probe's.
    steps100 = Pretrain(net=learner.net, task="classification", eval_head="logistic", eval_inner_steps=100)
    assert steps100.eval_inner_steps == 0  # the validation/test statistics are sized by it (one column)
    metric, _ = steps100.adaptation_curve(episode, steps100.eval_inner_steps)
    want_acc = (out[:, 0].argmax(-1) == episode.query_y).double().mean(-1) * 100
    torch.testing.assert_close(metric.squeeze(-1).double(), want_acc)
    # One task through solve_task (outside vmap) gives the same logits.
    one = learner.solve_task(learner.meta_params(), episode.support_x[0], episode.support_y[0], episode.query_x[0],
                             0, True, all_steps=False)
    torch.testing.assert_close(one, out[0, 0], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="algorithm.eval_head must be"):
        Pretrain(net=MLP(6, (5, 8), WAYS), task="classification", eval_head="svm")
