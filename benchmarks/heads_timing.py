"""Time per meta-step of the feature-head learners (ProtoNet, MetaOptNet ridge/SVM, pre-training).

    PYTHONPATH=src python benchmarks/heads_timing.py [--threads 1] [--repeats 5]

Two settings, 32 tasks of 5-way 1-shot 15-query: (1) the head alone on random 64-dim features
(forward and backward to the features), (2) the whole meta-step through Conv4 on 28x28 inputs.
Pre-training's rows are one training step on a labelled batch, and (its cost at evaluation) the
100-step head fit on a 32-task batch, forward only. Prints the median of ``--repeats`` runs.
"""
from __future__ import annotations

import argparse
import statistics
import time
from functools import partial
from typing import Callable

import torch

from metaft.algorithms import MetaOptNet, Pretrain, ProtoNet
from metaft.data import Episode
from metaft.models import Conv4

TASKS, WAYS, SHOTS, QUERIES, DIM = 32, 5, 1, 15, 64
HEADS = {"protonet": (ProtoNet, {}), "ridge": (MetaOptNet, {"head": "ridge"}), "svm": (MetaOptNet, {"head": "svm"})}


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def labels(n: int) -> torch.Tensor:
    return torch.arange(WAYS).repeat(n).expand(TASKS, -1).contiguous()


def make(cls, **kw):
    return cls(net=Conv4(), task="classification", optimizer=partial(torch.optim.Adam, lr=1e-3), **kw)


def head_only(name: str, vectorize: str, repeats: int) -> float:
    cls, kw = HEADS[name]
    learner = make(cls, vectorize=vectorize, **kw)
    fs = torch.randn(TASKS, WAYS * SHOTS, DIM).relu().requires_grad_()
    fq = torch.randn(TASKS, WAYS * QUERIES, DIM).relu().requires_grad_()
    sy, qy = labels(SHOTS), labels(QUERIES)
    meta = learner.meta_params()

    def step() -> None:
        head = partial(learner.head_logits, steps=0, ways=WAYS)
        if vectorize == "true":
            out = torch.vmap(lambda a, b, c: head(meta, a, b, c), in_dims=(0, 0, 0))(fs, sy, fq)
        else:
            out = torch.stack([head(meta, fs[i], sy[i], fq[i]) for i in range(TASKS)])
        learner.loss_fn(out[:, -1], qy).backward()

    return median_seconds(step, repeats)


def conv4_step(name: str, repeats: int) -> float:
    cls, kw = HEADS[name]
    learner = make(cls, **kw)  # vectorize=auto: a loop over tasks for Conv4 on a CPU
    g = torch.Generator().manual_seed(0)
    ep = Episode(torch.rand(TASKS, WAYS * SHOTS, 1, 28, 28, generator=g), labels(SHOTS),
                 torch.rand(TASKS, WAYS * QUERIES, 1, 28, 28, generator=g), labels(QUERIES))
    return median_seconds(lambda: learner.meta_backward(ep), repeats)


def pretrain_rows(repeats: int, batch: int) -> dict[str, float]:
    learner = make(Pretrain, eval_inner_steps=100, inner_lr=0.1)
    learner.make_classifier(4800)  # Omniglot's Vinyals training split with rotations
    x, y = torch.rand(batch, 1, 28, 28), torch.randint(4800, (batch,))
    train = Episode(x[None, :0], y[None, :0], x[None], y[None])
    g = torch.Generator().manual_seed(0)
    ep = Episode(torch.rand(TASKS, WAYS * SHOTS, 1, 28, 28, generator=g), labels(SHOTS),
                 torch.rand(TASKS, WAYS * QUERIES, 1, 28, 28, generator=g), labels(QUERIES))

    def evaluate() -> None:
        with torch.no_grad():
            learner.query_outputs(ep, 100, True, all_steps=True)

    return {f"pretrain train step (batch {batch})": median_seconds(lambda: learner.meta_backward(train), repeats),
            "pretrain eval: 100-step head fit, 32 tasks": median_seconds(evaluate, repeats)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128, help="pre-training batch size")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} thread(s), median of {args.repeats}; "
          f"{TASKS} tasks x {WAYS}-way {SHOTS}-shot {QUERIES}-query")
    for name in HEADS:
        for vec in ("true", "false"):
            print(f"{name:9s} head only, {DIM}-dim features, {'vmap' if vec == 'true' else 'loop'}: "
                  f"{1e3 * head_only(name, vec, args.repeats):8.1f} ms")
    for name in HEADS:
        print(f"{name:9s} Conv4 28x28 meta-step (forward + backward): {1e3 * conv4_step(name, args.repeats):8.1f} ms")
    for what, t in pretrain_rows(args.repeats, args.batch).items():
        print(f"{what}: {1e3 * t:8.1f} ms")


if __name__ == "__main__":
    main()
