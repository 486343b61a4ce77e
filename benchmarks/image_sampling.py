"""Episode sampling from an image benchmark against the network's forward pass on those images.

    .venv/bin/python benchmarks/image_sampling.py [--threads 1] [--repeats 5]

A 5-way 1-shot 15-query meta-batch of 4 tasks at 84 px, drawn from a mini-ImageNet cache file (built
here with random pixels, 5 classes per split, 20 images each, in the distributed layout) against one
forward pass of its images, task by task as the CPU path runs them, through the smallest network a
recipe uses (Conv4, 32 filters). A meta-step costs at least two forward passes and a backward, so the
ratio bounds sampling's share of a meta-step. Medians of ``--repeats`` runs, side by side.
"""
from __future__ import annotations

import argparse
import pickle
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from metaft.data import split_generator
from metaft.data.images import FewShotImages
from metaft.data.images.source import packaged_classes
from metaft.models import Conv4

PER_CLASS, TASKS = 20, 4


def write_cache(root: Path, classes: dict[str, list[str]]) -> None:
    """``mini-imagenet-cache-{split}.pkl`` as distributed: image_data uint8 [N, 84, 84, 3], class_dict."""
    rng = np.random.default_rng(0)
    for split, names in classes.items():
        images = rng.integers(0, 256, (len(names) * PER_CLASS, 84, 84, 3), dtype=np.uint8)
        rows = {c: list(range(i * PER_CLASS, (i + 1) * PER_CLASS)) for i, c in enumerate(names)}
        with open(root / f"mini-imagenet-cache-{split}.pkl", "wb") as f:
            pickle.dump({"image_data": images, "class_dict": rows}, f, protocol=4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        classes = {s: packaged_classes("mini_imagenet", s)[:5] for s in ("train", "val", "test")}
        write_cache(root, classes)
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
