"""Episode sampling from an image benchmark against the network's forward pass on those images.

    .venv/bin/python benchmarks/image_sampling.py [--threads 1] [--repeats 5]

A 5-way 1-shot 15-query meta-batch of 4 tasks at 84 px, drawn from a mini-ImageNet cache file (the tests'
miniature: random pixels, 5 classes per split, 20 images each, in the distributed layout) against one
forward pass of its images, task by task as the CPU path runs them, through the smallest network a
recipe uses (Conv4, 32 filters). A meta-step costs at least two forward passes and a backward, so the
ratio bounds sampling's share of a meta-step. Medians of ``--repeats`` runs, side by side.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' miniature writers
from metaft.data import split_generator  # noqa: E402
from metaft.data.images import FewShotImages  # noqa: E402
from metaft.data.images.source import packaged_classes  # noqa: E402
from metaft.models import Conv4  # noqa: E402
from tests.data.miniatures import mini_pickle  # noqa: E402

PER_CLASS, TASKS = 20, 4


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        classes = {s: packaged_classes("mini_imagenet", s)[:5] for s in ("train", "val", "test")}
        mini_pickle(root, classes, per_class=PER_CLASS)
        dm = FewShotImages("mini_imagenet", str(root), class_lists=classes, cache_dir=str(root / "cache"), ways=5,
                           shots=1, queries=15, mean=[0.5] * 3, std=[0.25] * 3)
        dm.sample("train", TASKS, split_generator(0, "train"))  # decode once, as training does before its steps
        net = Conv4(3, 84, 32, 5)
        sample_s, forward_s = [], []
        for i in range(args.repeats):
            t = time.perf_counter()
            ep = dm.sample("train", TASKS, split_generator(0, "train", i + 1))
            sample_s.append(time.perf_counter() - t)
            x = torch.cat([ep.support_x, ep.query_x], 1)
            with torch.no_grad():
                net(x[0][:8])  # warm-up
                t = time.perf_counter()
                for task in x:
                    net(task)
                forward_s.append(time.perf_counter() - t)
    s, f = statistics.median(sample_s), statistics.median(forward_s)
    print(f"sampling {s * 1e3:.1f} ms, forward pass {f * 1e3:.1f} ms, ratio {f / s:.1f}x "
          f"({TASKS} tasks, 5-way 1-shot 15 queries, 84 px, Conv4-32, {args.threads} thread(s), median of {args.repeats})")


if __name__ == "__main__":
    main()
