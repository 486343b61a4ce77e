"""One meta-step on ResNet-12 at 84 px, 5-way 1-shot, 15 queries per class, meta-batch 4: MAML
second and first order (all tasks at once, in chunks of ``--task-chunk`` tasks, and one task at a
time) and ProtoNet, time and peak memory, against the same MAML step written with ``higher``; and
the time to sample such a meta-batch from a (synthetic) mini-ImageNet cache, against the steps.

    PYTHONPATH=src python benchmarks/resnet12.py [--device cuda] [--rounds 5] [--json out.json]
    PYTHONPATH=src python benchmarks/resnet12.py --widths 8,8,8,8 --image-size 32 --rounds 1   # a quick look

Before timing, a gate checks in float64, on small widths and images, that every metaft path and
higher give the same meta-gradient (``bench.check_gradients``). Peak memory and the
alternating timing rounds are ``benchmarks/bench.py``'s (see benchmarks/README.md).
"""
from __future__ import annotations

import argparse
import json
import pickle
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "benchmarks")]  # run as a script from anywhere

# benchmarks/bench.py: the harness of the other suites (contenders, gate, memory, timing rounds)
from bench import (
    Suite,
    build_step,
    check_gradients,
    make_learner,
    metaft_step,
    paired_ratio,
    peak_memory_mb,
    time_alternating,
)

from metaft.algorithms import ProtoNet
from metaft.data import split_generator
from metaft.data.episode import Episode
from metaft.data.images import FewShotImages
from metaft.models import ResNet12

WAYS, SHOTS, QUERIES = 5, 1, 15


def episode(tasks: int, g: torch.Generator, size: int) -> Episode:
    """Random images of the benchmark's shape (the compute does not depend on the pixels)."""
    labels = torch.arange(WAYS)
    return Episode(torch.randn(tasks, WAYS * SHOTS, 3, size, size, generator=g),
                   labels.repeat_interleave(SHOTS).expand(tasks, -1).contiguous(),
                   torch.randn(tasks, WAYS * QUERIES, 3, size, size, generator=g),
                   labels.repeat_interleave(QUERIES).expand(tasks, -1).contiguous())


def suite(widths: tuple[int, ...], size: int, tasks: int) -> Suite:
    return Suite(name="resnet12", task="classification", meta_batch=tasks, inner_lr=0.01,
                 make_net=lambda: ResNet12(in_channels=3, image_size=size, channels=widths, out_features=WAYS),
                 make_episode=partial(episode, size=size))


def sampling_ms(tasks: int, size: int, repeats: int = 10) -> float:
    """Milliseconds to sample one meta-batch from a mini-ImageNet cache (random images in the
    distributed pickle layout, 20 classes of 40, decoded once into a temporary cache)."""
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        names = {s: [f"n{k:08d}" for k in range(20 * i, 20 * i + 20)] for i, s in enumerate(("train", "val", "test"))}
        for split, classes in names.items():
            data = {"image_data": rng.integers(0, 256, (800, 84, 84, 3), dtype=np.uint8),
                    "class_dict": {c: list(range(40 * i, 40 * i + 40)) for i, c in enumerate(classes)}}
            (Path(tmp) / f"mini-imagenet-cache-{split}.pkl").write_bytes(pickle.dumps(data, protocol=4))
        dm = FewShotImages("mini_imagenet", tmp, class_lists=names, cache_dir=f"{tmp}/cache", image_size=size,
                           ways=WAYS, shots=SHOTS, queries=QUERIES, mean=[0.47, 0.45, 0.41], std=[0.28, 0.27, 0.28])
        dm.sample("train", tasks, split_generator(0, "train"))  # decode once
        t = time.perf_counter()
        for i in range(repeats):
            dm.sample("train", tasks, split_generator(0, "train", i))
        return (time.perf_counter() - t) / repeats * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--widths", default="64,160,320,640")
    p.add_argument("--image-size", type=int, default=84)
    p.add_argument("--meta-batch", type=int, default=4)
    p.add_argument("--task-chunk", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--round-seconds", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-higher", action="store_true", help="skip higher (not installed)")
    p.add_argument("--paths", default="all,chunks,loop",
                   help="metaft's MAML paths to time, comma-separated: all (every task vmapped at once), "
                        "chunks (--task-chunk tasks at a time), loop (one task at a time, the CPU default); "
                        "higher and ProtoNet are always timed beside them")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    widths = tuple(int(w) for w in args.widths.split(","))
    contenders = [] if args.no_higher else ["higher"]
    chosen = args.paths.split(",")
    if unknown := set(chosen) - {"all", "chunks", "loop"}:
        p.error(f"--paths: unknown {sorted(unknown)}; choose from all, chunks, loop")

    gate = suite((3, 4, 4, 5), 16, 2)
    for algorithm in ("maml", "fomaml"):
        worst = check_gradients(gate, algorithm, ["metaft-alt", *contenders], device)
        print(f"gate {algorithm}: every path's meta-gradient within {worst:.1e} of metaft's")

    s = suite(widths, args.image_size, args.meta_batch)
    ep = s.make_episode(args.meta_batch, torch.Generator().manual_seed(0)).to(device)
    steps = {}
    for algorithm in ("maml", "fomaml"):
        paths = {"all": ("all tasks", {"vectorize": "true"}),
                 "chunks": (f"chunks of {args.task_chunk}", {"vectorize": "true", "task_chunk": args.task_chunk}),
                 "loop": ("loop", {"vectorize": "false"})}
        for name, kw in (paths[k] for k in chosen):
            learner = make_learner(s, algorithm, kw["vectorize"], task_chunk=kw.get("task_chunk")).to(device)
            steps[f"{algorithm} metaft {name}"] = metaft_step(learner, ep)
        for c in contenders:
            learner = make_learner(s, algorithm).to(device)
            steps[f"{algorithm} {c}"] = build_step(c, learner, ep, algorithm)
    torch.manual_seed(0)
    proto = ProtoNet(net=s.make_net(), task="classification", inner_steps=0).to(device)
    steps["protonet metaft"] = metaft_step(proto, ep)

    memory = {}
    for name, step in steps.items():
        step()  # warm-up
        memory[name] = peak_memory_mb(step, device)
    timing = time_alternating(steps, device, args.rounds, args.round_seconds)
    rows = []
    print(f"\nResNet-12 {widths} at {args.image_size} px, {WAYS}-way {SHOTS}-shot {QUERIES} queries, "
          f"meta-batch {args.meta_batch}, {device}, {torch.get_num_threads()} threads")
    print(f"{'step':34s} {'ms':>9s} {'noise':>6s} {'peak MB':>9s} {'x higher':>8s}")
    for name, t in timing.items():
        algorithm = name.split()[0]
        ref = timing.get(f"{algorithm} higher")
        ratio = paired_ratio(ref, t) if ref is not None and not name.endswith("higher") else None
        rows.append({"step": name, "step_ms": t.median * 1e3, "noise": t.noise, "peak_mem_mb": memory[name],
                     "vs_higher": ratio})
        print(f"{name:34s} {t.median * 1e3:9.1f} {t.noise:6.1%} {memory[name]:9.1f} "
              f"{'' if ratio is None else f'{ratio:8.2f}'}")
    sample = sampling_ms(args.meta_batch, args.image_size)
    fastest = min(t.median for t in timing.values()) * 1e3
    print(f"\nsampling one meta-batch: {sample:.1f} ms, {fastest / sample:.0f}x faster than the fastest step above")
    rows.append({"step": "sampling", "step_ms": sample})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
