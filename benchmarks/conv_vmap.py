"""Why the vmapped MAML step is slower than a loop on a CPU: one ResNet-12 convolution with a
different weight per task, every task at once under ``torch.func.vmap`` against a Python loop over
the tasks, forward and backward (with ``create_graph``, as MAML's inner step needs).

    PYTHONPATH=src python benchmarks/conv_vmap.py [--threads 2] [--device cuda]

Under vmap a convolution whose weight is batched runs as one grouped convolution (the tasks become
groups); this script times that against the per-task convolutions it replaces, for the widths and
feature-map sizes of ResNet-12 at 84 px (5-way 1-shot, 15 queries: 80 images per task).
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.func import vmap

# (in channels, out channels, feature-map side) of the first convolution of each ResNet-12 block at 84 px
LAYERS = ((3, 64, 84), (64, 160, 42), (160, 320, 21), (320, 640, 10))


def step(x: torch.Tensor, w: torch.Tensor, vectorized: bool) -> None:
    """Forward, then the gradient with respect to the weights with a graph kept (an inner step)."""
    w = w.detach().requires_grad_()
    if vectorized:
        y = vmap(lambda xi, wi: F.conv2d(xi, wi, padding=1))(x, w)
    else:
        y = torch.stack([F.conv2d(xi, wi, padding=1) for xi, wi in zip(x, w)])
    (g,) = torch.autograd.grad(y.square().sum(), w, create_graph=True)
    g.square().sum().backward()  # the outer backward through the inner gradient


def seconds(fn, repeats: int, device: str) -> float:
    """Best of ``repeats`` wall times, after one warm-up call."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    fn()
    best = float("inf")
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=4)
    p.add_argument("--images", type=int, default=80)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    print(f"{'layer':>18s} {'loop s':>8s} {'vmap s':>8s} {'vmap / loop':>11s}")
    for cin, cout, side in LAYERS:
        x = torch.randn(args.tasks, args.images, cin, side, side, generator=g).to(args.device)
        w = (torch.randn(args.tasks, cout, cin, 3, 3, generator=g) * 0.05).to(args.device)
        loop = seconds(lambda: step(x, w, False), args.repeats, args.device)
        vec = seconds(lambda: step(x, w, True), args.repeats, args.device)
        print(f"{f'{cin}->{cout} at {side}px':>18s} {loop:8.3f} {vec:8.3f} {vec / loop:11.2f}")


if __name__ == "__main__":
    main()
