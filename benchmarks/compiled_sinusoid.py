"""Could torch.compile give the sinusoid MAML step both speed and higher's memory? (A probe.)

    PYTHONPATH=src python benchmarks/compiled_sinusoid.py [--threads 1] [--rounds 5] [--cpp-wrapper] [--per-task]

higher keeps one task's graph alive at a time (one backward per task); metaft's batched path is
fast because all 25 tasks share one graph, which holds every task's activations. A compiled
function that takes the tasks one after another (``torch.func.grad_and_value`` per task, summed)
could in principle keep only one task's buffers alive while paying the per-operator overhead once
per compiled call. This script builds that function for the sinusoid suite (MAML, second order,
meta-batch 25, 10-shot, 10 queries), checks its meta-gradient against metaft's, then prints peak
memory and tasks/s beside higher's, metaft's default and metaft's ``task_chunk=1``, timed in
alternating rounds in one process (``benchmarks/bench.py``'s measurements). ``--cpp-wrapper`` sets
inductor's ``cpp_wrapper`` (the whole call sequence in C++, no Python per kernel). ``--per-task``
compiles one task's meta-gradient instead (added into a running sum in place) and calls it once per
task from Python, so the compiler cannot keep several tasks' buffers alive at once.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, grad_and_value

import bench  # benchmarks/bench.py, beside this script


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--cpp-wrapper", action="store_true")
    p.add_argument("--per-task", action="store_true", help="compile one task's step, loop over tasks in Python")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import torch._inductor.config as inductor_config

    inductor_config.cpp_wrapper = args.cpp_wrapper

    suite, device = bench.SUITES["sinusoid"], torch.device("cpu")
    episode = suite.make_episode(suite.meta_batch, torch.Generator().manual_seed(1))
    learner = bench.make_learner(suite, "maml")
    net, lr = learner.net, learner.inner_lr
    start = {k: v.detach() for k, v in net.named_parameters()}

    def task_loss(params: dict, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor) -> torch.Tensor:
        g = grad(lambda q: F.mse_loss(functional_call(net, q, (sx,)), sy))(params)
        adapted = {k: params[k] - lr * g[k] for k in params}
        return F.mse_loss(functional_call(net, adapted, (qx,)), qy)

    def meta_gradient(params: dict, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor):
        tasks = sx.shape[0]
        total, loss = {k: torch.zeros_like(v) for k, v in params.items()}, sx.new_zeros(())
        for t in range(tasks):  # unrolled by the compiler: one task after another
            g, value = grad_and_value(task_loss)(params, sx[t], sy[t], qx[t], qy[t])
            total = {k: total[k] + g[k] / tasks for k in total}
            loss = loss + value / tasks
        return total, loss

    inputs = (start, episode.support_x, episode.support_y, episode.query_x, episode.query_y)
    if args.per_task:
        tasks = suite.meta_batch

        def one_task(params: dict, total: dict, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor) -> torch.Tensor:
            g, value = grad_and_value(task_loss)(params, sx, sy, qx, qy)
            for k in total:  # in place: nothing of this task outlives the call
                total[k].add_(g[k], alpha=1.0 / tasks)
            return value / tasks

        step_one = torch.compile(one_task, fullgraph=True, dynamic=False)
        total = {k: torch.zeros_like(v) for k, v in start.items()}
        per_task = [tuple(t[i] for t in inputs[1:]) for i in range(tasks)]

        def compiled(*_: object) -> tuple[dict, torch.Tensor]:
            for v in total.values():
                v.zero_()
            loss = sum(step_one(start, total, *task) for task in per_task)
            return total, loss

    else:
        compiled = torch.compile(meta_gradient, fullgraph=True, dynamic=False)
    t0 = time.perf_counter()
    grads, _ = compiled(*inputs)
    print(f"compile: {time.perf_counter() - t0:.1f} s (cpp_wrapper={args.cpp_wrapper}, per_task={args.per_task})")

    reference = bench.meta_gradient(learner, bench.metaft_step(learner, episode))
    err = max((grads[k] - reference[f"net.{k}"]).abs().max().item() for k in grads)
    scale = max(g.abs().max().item() for g in reference.values())
    print(f"meta-gradient vs metaft: max difference {err / scale:.1e} of the largest entry")
    if err / scale > 1e-4:
        raise SystemExit("the compiled meta-gradient differs from metaft's")

    # As in benchmarks/bench.py: each contender its own learner, every step run once before measuring.
    steps = {
        "compiled": lambda: compiled(*inputs),
        "metaft": bench.metaft_step(learner, episode),
        "metaft/1": bench.metaft_step(bench.make_learner(suite, "maml", task_chunk=1), episode),
        "higher": bench.higher_step(bench.make_learner(suite, "maml"), episode, "maml"),
    }
    for step in steps.values():
        step()
    memory = {name: bench.peak_memory_mb(step, device) for name, step in steps.items()}
    timing = bench.time_alternating(steps, device, rounds=args.rounds, round_s=0.5)
    higher_rate = suite.meta_batch / timing["higher"].median
    print(f"{'contender':>10} {'tasks/s':>9} {'x higher':>9} {'peak MB':>8}")
    for name in steps:
        rate = suite.meta_batch / timing[name].median
        print(f"{name:>10} {rate:>9.0f} {rate / higher_rate:>9.2f} {memory[name]:>8.3f}")


if __name__ == "__main__":
    main()
