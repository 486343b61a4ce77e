"""Adapt many target problems at once with the platform's own machinery (issue #17's study):
full fine-tuning of all weights as the one inner loop ``adapt`` (many first-order full-batch
steps), and linear probes on frozen features (``algorithms.probes``). One ``Episode`` holds the
problems: support = a problem's labelled training examples, query = its test examples.

Batch norm (``bn``): ``inductive`` (default) normalises every test query with the statistics of
the problem's support set, so a query's prediction depends on the support set and on itself only,
never on the other test queries; ``transductive`` lets the queries share their own batch
statistics (the MAML reference code's test, and ``FineTuner``'s evaluation with
``model.bn=transductive``). Models with running statistics (``model.bn=running``) use them at
test either way, each problem starting from the checkpoint's and updating its own copy.

The update rule is the inner loop's (``InnerOptimizer``: plain SGD, momentum or Adam, with
torch.optim's arithmetic); its state starts afresh for each problem and is carried from step to
step (and across evaluation points). Where the weights start: ``starts``.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from metaft.core.tasks import has_conv, running_stats, vectorize_choice
from metaft.algorithms.feature_head import FeatureHeadLearner
from metaft.core.inner_loop import SGD, InnerOptimizer, InnerState, adapt, content_generator
from metaft.core.objective import Objective
from metaft.data.episode import Episode
from metaft.algorithms.probes import (
    cosine_logits,
    fit_cosine_head,
    linear_logits,
    logistic_regression,
    probe_logits,
    prototype_head,
)
from metaft.study.augment import Augment
from metaft.study.starts import HeadInit, check_head_init, features, lp_head, start
from metaft.models.nets import MetaNet
from metaft.models.norm import support_statistics

BN = Literal["inductive", "transductive"]
CLASSIFICATION = Objective("classification")
Probe = Literal["logistic", "prototype", "cosine", "cosine_prototype"]


def query_outputs(module: nn.Module, params: dict[str, Tensor], sx: Tensor, qx: Tensor, bn: BN) -> tuple[Tensor, Tensor]:
    """One problem's outputs of ``module`` (as ``functional_call`` with ``params``, which may
    include buffers) on the support and the query inputs, batch norm as ``bn`` says."""
    if bn not in ("inductive", "transductive"):
        raise ValueError(f"bn must be 'inductive' or 'transductive', got {bn!r}")
    if bn == "transductive" or running_stats(module):
        return functional_call(module, params, (sx,)), functional_call(module, params, (qx,))
    with support_statistics(module, sx.shape[0]):
        out = functional_call(module, params, (torch.cat([sx, qx]),))
    return out[: sx.shape[0]], out[sx.shape[0]:]


def problem_fingerprints(episode: Episode) -> list[str]:
    """One SHA-256 (16 hex digits, as ``MetaDataModule.fingerprint``) per problem of ``episode``,
    over its support and query tensors: equal fingerprints mean the same target problem, the key
    ``stats.paired_differences`` matches inits by. Hashed in float32 and int64 on the CPU, so a
    problem keeps its fingerprint across devices and float precisions of the same images."""
    out = []
    for i in range(episode.num_tasks):
        h = hashlib.sha256()
        for t in (episode.support_x[i], episode.support_y[i], episode.query_x[i], episode.query_y[i]):
            t = t.detach().cpu()
            h.update((t.float() if t.is_floating_point() else t.long()).contiguous().numpy().tobytes())
        out.append(h.hexdigest()[:16])
    return out


def use_vmap(net: nn.Module, device: torch.device, vectorize: str | bool = "auto") -> bool:
    """The learners' rule (``core.tasks.vectorize_choice``), over target problems."""
    v = str(vectorize).lower()
    if v not in ("auto", "true", "false"):
        raise ValueError(f"vectorize must be auto, true or false, got {vectorize!r}")
    if v == "true" and running_stats(net):
        raise ValueError("vectorize=true cannot update running batch-norm statistics per problem; use auto or false")
    return vectorize_choice(v, device, has_conv(net), running_stats(net))


def _buffers(net: nn.Module) -> dict[str, Tensor]:
    """A fresh copy of the running statistics for one problem (empty for batch-statistics nets)."""
    return {k: v.clone() for k, v in net.named_buffers()}


@dataclass
class Curves:
    """Full fine-tuning of every problem: test accuracy (percent) and loss after ``steps[j]``
    optimiser steps (column 0: the start), and cumulative adaptation seconds (evaluation excluded; on
    the vmapped path each problem is charged an equal share of the batch's time), and the query
    logits after the last step (for per-query analyses)."""

    steps: list[int]
    acc: Tensor  # [problems, evaluations]
    loss: Tensor  # [problems, evaluations]
    seconds: Tensor  # [problems, evaluations]
    logits: Tensor  # [problems, queries, ways]


def finetune_problems(net: MetaNet, episode: Episode, steps: int, lr: float, eval_every: int | None = None,
                      head_init: HeadInit = "prototypes", bn: BN = "inductive",
                      vectorize: str | bool = "auto", objective: Objective = CLASSIFICATION,
                      optimizer: InnerOptimizer = SGD, augment: Augment | None = None) -> Curves:
    """Fine-tune all weights of ``net`` on every problem's support set (full batch, ``steps``
    steps of the first-order inner loop with ``optimizer`` at step size ``lr``, its state fresh
    for each problem), testing on its queries every ``eval_every`` steps (default: only at the
    start and the end). ``net`` is not modified. ``head_init``: where the head starts
    (``starts``). ``objective``: classification (``acc`` is accuracy in percent) or regression
    (``acc`` holds the MSE; the head is kept). ``augment``: each step sees an augmented copy of
    the support images (``study.augment``, P>M>F's per-task fine-tuning)."""
    if steps < 0 or lr <= 0:
        raise ValueError(f"steps must be >= 0 and lr > 0, got steps={steps}, lr={lr}")
    ways = _check(net, episode, head_init, bn, objective)
    if augment is not None and episode.support_x.dim() != 5:
        raise ValueError("adapt.finetune.augment needs image problems (support [problems, examples, C, H, W]), got "
                         f"inputs of shape {list(episode.support_x.shape)}: set adapt.finetune.augment=null")
    every = eval_every or max(steps, 1)
    if every < 1:
        raise ValueError(f"eval_every must be >= 1 step, got {eval_every}")
    points = sorted({*range(0, steps + 1, every), steps})
    run = (lr, optimizer, objective, augment)
    was_training = net.training
    try:
        net.train()  # batch statistics of the support set in adaptation (running ones updated)
        if use_vmap(net, episode.support_x.device, vectorize):
            acc, loss, secs, logits = _finetune_vmap(net, episode, points, run, ways, head_init, bn)
        else:
            runs = [_finetune_one(net, episode[i], points, run, ways, head_init, bn)
                    for i in range(episode.num_tasks)]
            acc, loss, secs, logits = (torch.stack(t) for t in zip(*runs))
    finally:
        net.train(was_training)
    return Curves(points, acc, loss, secs, logits)


def _check(net: MetaNet, episode: Episode, head_init: str, bn: str, objective: Objective) -> int:
    """The problems' number of outputs, after checking the start and batch norm fit them."""
    check_head_init(head_init)
    if bn not in ("inductive", "transductive"):
        raise ValueError(f"bn must be 'inductive' or 'transductive', got {bn!r}")
    if objective.regression:
        if head_init != "keep":
            raise ValueError(f"regression keeps the network's head: use head_init=keep, got {head_init!r}")
        return net.head.out_features
    ways = FeatureHeadLearner.episode_ways(episode)
    if head_init == "keep" and net.head.out_features != ways:
        raise ValueError(f"head_init=keep needs a head of {ways} outputs (the problems' ways), the net has "
                         f"{net.head.out_features}; use head_init=zero or tempered")
    return ways


def start_support_loss(net: MetaNet, episode: Episode, head_init: HeadInit,
                       objective: Objective = CLASSIFICATION) -> Tensor:
    """Every problem's support loss at the start ``head_init`` gives, ``[P]``: the loss whose
    gradient the first fine-tuning step follows (training-mode batch norm, as in adaptation)."""
    ways = _check(net, episode, head_init, "inductive", objective)
    was_training = net.training
    net.train()
    try:
        out = []
        with torch.no_grad():
            for i in range(episode.num_tasks):
                sx, sy, buffers = episode.support_x[i], episode.support_y[i], _buffers(net)
                params = start(net, sx, sy, ways, head_init, buffers)
                out.append(objective.loss(functional_call(net, {**params, **buffers}, (sx,)), sy))
    finally:
        net.train(was_training)
    return torch.stack(out)


Run = tuple[float, InnerOptimizer, Objective, Augment | None]  # step size, update rule, loss, augmentation


def _steps(forward, params: dict[str, Tensor], slots: dict[str, dict[str, Tensor]], done: int, sx: Tensor,
           sy: Tensor, steps: int, run: Run) -> tuple[dict[str, Tensor], dict[str, dict[str, Tensor]]]:
    """``steps`` first-order steps of ``adapt`` after ``done`` earlier ones, one at a time (its
    trajectory would otherwise hold every intermediate model between two evaluations); the
    optimiser's state goes in and out as tensors (``slots``), so this runs under ``vmap``."""
    lr, optimizer, objective, _ = run
    state = InnerState(done, dict(slots))
    for _ in range(steps):
        trajectory = adapt(forward, params, sx, sy, objective.loss, 1, lr, first_order=True,
                           optimizer=optimizer, state=state)
        params = {k: v.detach() for k, v in trajectory[-1].items()}
    return params, state.detached().slots


def _evaluate(net: MetaNet, params: dict[str, Tensor], sx: Tensor, qx: Tensor, qy: Tensor,
              bn: BN, objective: Objective) -> tuple[Tensor, Tensor, Tensor]:
    """Query metric (accuracy in percent, or MSE), mean loss and outputs of one problem at
    ``params``. Running statistics are read in eval mode, as ``FineTuner``'s test does."""
    net.eval()
    try:
        _, out = query_outputs(net, params, sx, qx, bn)
    finally:
        net.train()
    return objective.per_task_metric(out, qy), objective.loss(out, qy), out


def _finetune_one(net: MetaNet, ep: Episode, points: list[int], run: Run, ways: int, head_init: HeadInit,
                  bn: BN) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    sx, sy, qx, qy = ep.support_x[0], ep.support_y[0], ep.query_x[0], ep.query_y[0]
    buffers = _buffers(net)  # this problem's own running statistics (updated in place)
    t0 = time.perf_counter()
    with torch.no_grad():
        params = start(net, sx, sy, ways, head_init, buffers)
    spent = time.perf_counter() - t0

    def forward(p: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(net, {**p, **buffers}, (x,))

    acc, loss, secs, done, slots = [], [], [], 0, {}
    g = content_generator(sx) if run[3] else None  # this problem's augmentations, whatever the batch
    for point in points:
        t0 = time.perf_counter()
        if run[3] is None:
            params, slots = _steps(forward, params, slots, done, sx, sy, point - done, run)
        for i in range(done, point) if run[3] else ():  # a freshly augmented support set per step
            params, slots = _steps(forward, params, slots, i, run[3](sx, g), sy, 1, run)
        spent += time.perf_counter() - t0
        done = point
        with torch.no_grad():
            a, l_, out = _evaluate(net, {**params, **buffers}, sx, qx, qy, bn, run[2])
        acc.append(a), loss.append(l_), secs.append(spent)
    return torch.stack(acc), torch.stack(loss), torch.tensor(secs, dtype=torch.float64), out


def _finetune_vmap(net: MetaNet, ep: Episode, points: list[int], run: Run, ways: int, head_init: HeadInit,
                   bn: BN) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    def forward(p: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(net, p, (x,))

    n = ep.num_tasks
    t0 = time.perf_counter()
    if head_init == "lpft":  # its solver is batched over problems already (and cannot run under vmap)
        params = vmap(lambda sx, sy: start(net, sx, sy, ways, "zero", {}))(ep.support_x, ep.support_y)
        fs = vmap(lambda p, sx: features(net, p, {}, sx))(params, ep.support_x)
        params["head.weight"], params["head.bias"] = lp_head(fs, ep.support_y, ways)
    else:
        params = vmap(lambda sx, sy: start(net, sx, sy, ways, head_init, {}))(ep.support_x, ep.support_y)
    spent = time.perf_counter() - t0
    evaluate = vmap(lambda p, sx, qx, qy: _evaluate(net, p, sx, qx, qy, bn, run[2]))
    acc, loss, secs, done, slots = [], [], [], 0, {}
    gens = [content_generator(x) for x in ep.support_x] if run[3] else []
    for point in points:
        t0 = time.perf_counter()
        if point > done and run[3] is None:
            step = partial(_steps, forward, done=done, steps=point - done, run=run)
            params, slots = vmap(lambda p, s, sx, sy: step(p, s, sx=sx, sy=sy))(params, slots, ep.support_x,
                                                                               ep.support_y)
        for i in range(done, point) if run[3] else ():  # augmented outside vmap, from each problem's generator
            xa = torch.stack([run[3](x, g) for x, g in zip(ep.support_x, gens)])
            step = partial(_steps, forward, done=i, steps=1, run=run)
            params, slots = vmap(lambda p, s, sx, sy: step(p, s, sx=sx, sy=sy))(params, slots, xa, ep.support_y)
        spent += time.perf_counter() - t0
        done = point
        with torch.no_grad():
            a, l_, out = evaluate(params, ep.support_x, ep.query_x, ep.query_y)
        acc.append(a), loss.append(l_), secs.append(torch.full((n,), spent / n, dtype=torch.float64))
    return torch.stack(acc, 1), torch.stack(loss, 1), torch.stack(secs, 1), out


def probe_features(net: MetaNet, episode: Episode, bn: BN = "inductive") -> tuple[Tensor, Tensor]:
    """Frozen body features of every problem, ``([P, S, D], [P, Q, D])``, computed once (eval
    mode: running statistics where the model keeps them; else batch norm as ``bn`` says)."""
    body = dict(net.body.named_parameters()) | dict(net.body.named_buffers())
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            pairs = [query_outputs(net.body, body, episode.support_x[i], episode.query_x[i], bn)
                     for i in range(episode.num_tasks)]
    finally:
        net.train(was_training)
    return torch.stack([p[0].flatten(1) for p in pairs]), torch.stack([p[1].flatten(1) for p in pairs])


def probe_problems(net: MetaNet, episode: Episode, head: Probe = "logistic", bn: BN = "inductive",
                   C: float = 1.0, cosine_scale: float = 10.0, cosine_steps: int = 100,
                   cosine_lr: float = 1.0) -> Tensor:
    """Linear probe of every problem (body frozen): test accuracy in percent, ``[P]``.
    ``logistic``: RFS (L2-normalised features, logistic regression with inverse L2 strength
    ``C``); ``prototype``: nearest class mean; ``cosine``: a Baseline++ head fitted by
    ``cosine_steps`` gradient steps at ``cosine_scale``; ``cosine_prototype``: Meta-Baseline's
    classifier, the class mean with the highest cosine (its learned scale does not change the
    argmax). The heads run in at least float32, the logistic regression in float64 (an exact
    solve, cheap next to the body). The cosine head's step count and size are plain defaults,
    not tuned: choose them on validation problems."""
    if head not in ("logistic", "prototype", "cosine", "cosine_prototype"):
        raise ValueError(f"head must be logistic, prototype, cosine or cosine_prototype, got {head!r}")
    ways = FeatureHeadLearner.episode_ways(episode)
    fs, fq = probe_features(net, episode, bn)
    dtype = torch.promote_types(fs.dtype, torch.float32)
    fs, fq, sy = fs.to(dtype), fq.to(dtype), episode.support_y
    if head == "logistic":
        w, b = logistic_regression(fs.double(), sy, ways, C=C)
        logits = probe_logits(fq.double(), w, b)
    elif head == "prototype":
        logits = linear_logits(fq, *prototype_head(fs, sy, ways))
    elif head == "cosine_prototype":
        logits = cosine_logits(fq, prototype_head(fs, sy, ways)[0], cosine_scale)  # W = 2 mu: same direction
    else:
        logits = cosine_logits(fq, fit_cosine_head(fs, sy, ways, cosine_scale, cosine_steps, cosine_lr), cosine_scale)
    return (logits.argmax(-1) == episode.query_y).to(dtype).mean(-1) * 100


def ridge_problems(net: MetaNet, episode: Episode, lam: float = 1e-3, bn: BN = "inductive") -> Tensor:
    """Regression's linear probe: a least-squares head (with bias and an L2 penalty ``lam``) on
    the frozen body's features of every problem's support set, solved exactly in float64; the
    test MSE of each problem, ``[P]``."""
    fs, fq = probe_features(net, episode, bn)
    fs, fq = (torch.cat([f.double(), f.new_ones(*f.shape[:-1], 1, dtype=torch.float64)], -1) for f in (fs, fq))
    eye = torch.eye(fs.shape[-1], dtype=torch.float64)
    eye[-1, -1] = 0  # the bias is not penalised
    w = torch.linalg.solve(fs.transpose(1, 2) @ fs + lam * eye, fs.transpose(1, 2) @ episode.support_y.double())
    return (fq @ w - episode.query_y.double()).pow(2).mean((-2, -1))
