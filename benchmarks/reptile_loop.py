"""``python benchmarks/reptile_loop.py``: one Reptile meta-step with the paper's Omniglot inner loop,
metaft against the loop a Reptile user would write, measured side by side in one process.

The paper's 5-way setting (Nichol et al. 2018): 10 training shots per class, Adam (beta1 = 0,
step 1e-3) on mini-batches of 10 support images for 5 iterations, its moments carried from task to
task, meta-batch 5, outer step 1.0; Conv4 with transductive batch norm. The plain loop: a copy of
the module and one ``torch.optim.Adam`` kept across tasks, each task started from the meta-weights
(restored in place), the mean of the adapted weights taken after the meta-batch, each task's query predictions made (the
training loss a run logs, which metaft's step also returns). Before timing,
both make the same meta-step in float64 (the gate); then they alternate in timed rounds
(``bench.time_alternating``) and the ratio is the median of the rounds' paired ratios.
"""
from __future__ import annotations

import argparse
import copy
import sys
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

try:  # run as a script: benchmarks/ is on the path
    from bench import _omniglot_compute_episode, paired_ratio, time_alternating
except ModuleNotFoundError:  # imported as benchmarks.reptile_loop (the tests)
    from benchmarks.bench import _omniglot_compute_episode, paired_ratio, time_alternating
from metaft.algorithms import Reptile
from metaft.core.inner_loop import support_batches
from metaft.data import Episode
from metaft.models import Conv4

WAYS, SHOTS, BATCH, STEPS, INNER_LR, BETAS, META_BATCH = 5, 10, 10, 5, 1e-3, (0.0, 0.999), 5


def make_learner(seed: int = 0) -> Reptile:
    torch.manual_seed(seed)
    return Reptile(net=Conv4(1, 28, 64, WAYS, pool="max"), task="classification", inner_lr=INNER_LR, inner_steps=STEPS,
                   inner_optimizer="adam", inner_betas=list(BETAS), inner_state="carry", inner_batch=BATCH,
                   optimizer=lambda params: torch.optim.SGD(params, lr=1.0))


def metaft_step(learner: Reptile, episode: Episode) -> Callable[[], None]:
    opt = learner.configure_optimizers()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        learner.meta_backward(episode)
        opt.step()

    return step


def plain_step(learner: Reptile, episode: Episode,
               batches: Callable[[Tensor], Tensor] | None = None) -> Callable[[], None]:
    """The same meta-step as a user writes it: ``batches(support_x)`` gives each task's mini-batch
    indices (default: a fresh shuffle of the support set per task)."""
    module = copy.deepcopy(learner.net)  # the task-level copy the inner optimiser updates
    inner = torch.optim.Adam(module.parameters(), lr=INNER_LR, betas=BETAS)
    meta = list(learner.net.parameters())
    fast = list(module.parameters())

    def shuffled(x: Tensor) -> Tensor:
        return torch.randperm(x.shape[0])[: STEPS * BATCH].view(STEPS, BATCH)

    draw = batches or shuffled

    def step() -> None:
        total = [torch.zeros_like(p) for p in meta]
        outputs = []
        for t in range(episode.num_tasks):
            sx, sy = episode.support_x[t], episode.support_y[t]
            with torch.no_grad():
                for f, p in zip(fast, meta):
                    f.copy_(p)
            for idx in draw(sx):
                inner.zero_grad(set_to_none=True)
                F.cross_entropy(module(sx[idx]), sy[idx]).backward()
                inner.step()
            with torch.no_grad():
                # The adapted model's query predictions: the training loss and accuracy a run logs,
                # which metaft's step returns too.
                outputs.append(module(episode.query_x[t]))
                for acc, f in zip(total, fast):
                    acc.add_(f)
        with torch.no_grad():  # theta <- theta + 1.0 * (mean(phi) - theta)
            for p, acc in zip(meta, total):
                p.copy_(acc / episode.num_tasks)

    return step


def gate(tasks: int = 2) -> float:
    """The largest difference between the two meta-steps' weights, in float64 (the same batches).
    A convolution's bias followed by batch norm is left out: its exact gradient is zero, and Adam
    divides the rounding noise in its place by its own size, so it moves by up to the step size
    either way (by about 1e-9 differently in the two loops)."""
    e = _omniglot_compute_episode(tasks, torch.Generator().manual_seed(1), WAYS, SHOTS, 1)
    episode = Episode(e.support_x.double(), e.support_y, e.query_x.double(), e.query_y)
    a, b = make_learner().double(), make_learner().double()
    ours, theirs = metaft_step(a, episode), plain_step(b, episode, lambda x: support_batches(x, BATCH, STEPS, False))
    for _ in range(2):  # twice: the carried moments must agree too
        ours()
        theirs()
    return max(float((p - q).detach().abs().max()) for (name, p), q in zip(a.net.named_parameters(), b.net.parameters())
               if not (name.startswith("body.") and name.endswith(".0.bias")))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/reptile_loop.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=7, help="timed rounds per contender")
    p.add_argument("--round-seconds", type=float, default=2.0, help="target duration of one timed round")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.round_seconds <= 0:
        p.error("--rounds must be >= 1 and --round-seconds > 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    diff = gate()
    print(f"gate (float64, 2 tasks, 2 meta-steps): largest weight difference {diff:.2e}")
    if diff > 1e-12:
        print("gate failed: the two loops do not make the same meta-step", file=sys.stderr)
        return 1
    episode = _omniglot_compute_episode(META_BATCH, torch.Generator().manual_seed(0), WAYS, SHOTS, 1)
    steps = {"metaft": metaft_step(make_learner(), episode), "plain loop": plain_step(make_learner(), episode)}
    timing = time_alternating(steps, torch.device("cpu"), args.rounds, args.round_seconds)
    for name, t in timing.items():
        print(f"{name:>10}: {t.median * 1e3:8.1f} ms per meta-step (noise +-{t.noise:.0%}, {args.rounds} rounds, "
              f"{torch.get_num_threads()} threads)")
    ratio = paired_ratio(timing["plain loop"], timing["metaft"])
    print(f"plain loop / metaft: {ratio:.2f} (above 1: metaft faster)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
