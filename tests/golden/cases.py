"""The golden runs: a fixed set of short seeded stage-1 runs through the real entry point, and
what each run is summarised by, so that a refactor can check that it moved no number.

Every algorithm that regresses runs on the sinusoid, and one run per learner kind on Omniglot
(second-order MAML, ANIL, Reptile with the carried Adam inner optimiser on support mini-batches,
ProtoNet, MetaOptNet, pre-training, Baseline++, Meta-Baseline warm-started from the Baseline++
run). A run is summarised by its ``results.json`` (test and validation metrics, the test
episodes' fingerprint, the training-stream version), the fingerprints of its validation episodes
and of the meta-batches it trained on, and the float64 sum and norm of every tensor of its final
checkpoint (``last.ckpt``), so a change anywhere in training, evaluation or the data is seen even
where a few-episode accuracy does not move.

The stored numbers are in ``golden.json`` beside this file, written by ``python -m tests.golden.record``
(see that module); ``tests/golden/test_golden.py`` re-runs every case and compares.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch

GOLDEN = Path(__file__).with_name("golden.json")
# Metrics and weight summaries: a relative tolerance because a refactor may legitimately reorder
# float32 operations; 1e-6 is far below any change of an inner lr, a step or an episode, and far
# above the last-bit differences of a reordered sum (two recordings in a row agree exactly).
REL = 1e-6

# Short and seeded: two validations (so best.ckpt is chosen between them), few, small episodes.
_COMMON = ("seed=3", "trainer.max_steps=4", "trainer.val_check_interval=2", "checkpoint.every_n_train_steps=2",
           "logging.images=false", "progress=log")
_SINUSOID = ("dataset=sinusoid", "dataset.meta_batch_size=4", "dataset.val_episodes=8", "dataset.test_episodes=10",
             "dataset.eval_batch_size=4")
# Omniglot 5-way 1-shot with 2 query images per class; 10 test episodes in batches of 4.
_OMNIGLOT = ("dataset=omniglot", "dataset.ways=5", "dataset.shots=1", "dataset.queries=2", "dataset.eval_queries=2",
             "dataset.meta_batch_size=2", "dataset.val_episodes=4", "dataset.test_episodes=10",
             "dataset.eval_batch_size=4")


@dataclass(frozen=True)
class Case:
    """One golden run: ``name`` (``<dataset>/<label>``), its Hydra overrides of ``--config-name train``,
    and optionally an earlier case whose ``best.ckpt`` becomes ``algorithm.init_ckpt``."""

    name: str
    overrides: tuple[str, ...]
    warm_start: str | None = None

    @property
    def dataset(self) -> str:
        return self.name.split("/", 1)[0]

    @property
    def algorithm(self) -> str:
        return next(o.split("=", 1)[1] for o in self.overrides if o.startswith("algorithm="))


def _sinusoid(algorithm: str, *extra: str, label: str | None = None) -> Case:
    return Case(f"sinusoid/{label or algorithm}", (f"algorithm={algorithm}", *_COMMON, *_SINUSOID, *extra))


def _omniglot(algorithm: str, *extra: str, label: str | None = None, warm_start: str | None = None) -> Case:
    return Case(f"omniglot/{label or algorithm}", (f"algorithm={algorithm}", *_COMMON, *_OMNIGLOT, *extra), warm_start)


CASES: tuple[Case, ...] = (
    _sinusoid("maml"),
    _sinusoid("fomaml"),
    _sinusoid("metasgd"),
    _sinusoid("anil"),
    _sinusoid("boil"),
    _sinusoid("reptile"),
    # The inner optimiser's options on the second-order path: momentum, two steps, a mini-batch.
    _sinusoid("maml", "algorithm.inner_momentum=0.5", "algorithm.inner_steps=2", "algorithm.inner_batch=6",
              label="maml_momentum"),
    _omniglot("maml"),
    _omniglot("anil"),
    # Reptile's paper loop: Adam (beta1 0) on support mini-batches, its state carried from task to task,
    # more training shots than test shots; mini-batches that do not divide the support sets.
    _omniglot("reptile", "algorithm.inner_optimizer=adam", "algorithm.inner_betas=[0.0,0.999]",
              "algorithm.inner_lr=0.001", "algorithm.inner_state=carry", "algorithm.inner_steps=3",
              "algorithm.inner_batch=4", "algorithm.eval_inner_steps=4", "algorithm.eval_inner_batch=3",
              "dataset.train_shots=2", "algorithm.optimizer.lr=1.0", label="reptile_adam_carry"),
    _omniglot("protonet"),
    _omniglot("metaoptnet"),
    _omniglot("pretrain", "algorithm.eval_inner_steps=5"),
    _omniglot("baselinepp", "algorithm.eval_inner_steps=3"),
    _omniglot("metabaseline", warm_start="omniglot/baselinepp"),
)
BY_NAME = {c.name: c for c in CASES}


def environment() -> dict[str, str]:
    """What the numbers are bit-exact for: the same code gives the same bits on one machine and one
    thread, but a CPU with other vector instructions (other BLAS/oneDNN kernels) or another torch sums
    in another order, and a few Adam steps (its first steps move each weight by about lr whatever the
    gradient's size) amplify last-bit differences to 1e-3 and beyond on Omniglot (measured: one
    thread against two, every Omniglot case moved, no sinusoid case)."""
    import platform

    cpu = next((line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")), "")
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "machine": platform.machine(), "cpu": cpu or platform.processor()}


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def _digest(tensors: Iterable[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def train_fingerprint(dm: Any, steps: int, labelled_batch_size: int | None) -> str:
    """SHA-256 of the first ``steps`` meta-training batches the datamodule yields (one process,
    from step 0): the training stream, apart from the learner."""
    dm.labelled_batch_size = labelled_batch_size
    batches = iter(dm.train_dataloader())
    tensors: list[torch.Tensor] = []
    for _ in range(steps):
        batch = next(batches)
        tensors += list(batch) if isinstance(batch, tuple) else [batch.support_x, batch.support_y, batch.query_x,
                                                                 batch.query_y]
    return _digest(tensors)


def weight_summary(ckpt: Path) -> dict[str, list[float]]:
    """Per floating-point tensor of the checkpoint's ``state_dict``: [sum, sum of absolute values]
    in float64 (``differences`` compares the sum to within ``REL`` of the second: a sum can cancel)."""
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    return {k: [float(v.double().sum()), float(v.double().abs().sum())] for k, v in sorted(state.items())
            if torch.is_floating_point(v)}


def run_case(case: Case, out_dir: Path, done: dict[str, Path]) -> dict[str, Any]:
    """Run ``case`` in this process into ``out_dir``; ``done`` maps finished case names to their run
    directories (for ``warm_start``). Returns the case's summary (what ``golden.json`` stores)."""
    import hydra
    from hydra.core.global_hydra import GlobalHydra

    from metaft.stages import main
    from tests.conftest import compose

    overrides = list(case.overrides)
    if case.warm_start is not None:
        overrides.append(f"algorithm.init_ckpt={done[case.warm_start] / 'checkpoints' / 'best.ckpt'}")
    try:
        cfg = compose("train", overrides, out_dir)
        main(cfg)
        dm = hydra.utils.instantiate(cfg.dataset)
        labelled = cfg.algorithm.get("batch_size") if "Pretrain" in str(cfg.algorithm._target_) else None
        train_fp = train_fingerprint(dm, int(cfg.trainer.max_steps), labelled)
        val_fp = dm.fingerprint("val")
    finally:
        GlobalHydra.instance().clear()
    results = json.loads((out_dir / "results.json").read_text())
    kept = {k: v for k, v in sorted(results.items()) if k not in ("ckpt", "overrides")}
    kept["ckpt"] = Path(results["ckpt"]).name if results.get("ckpt") else None  # best.ckpt or last.ckpt
    return {
        "overrides": list(case.overrides) + ([f"algorithm.init_ckpt=<{case.warm_start} best.ckpt>"]
                                              if case.warm_start else []),
        "results": kept,
        "val_episodes_fingerprint": val_fp,
        "train_batches_fingerprint": train_fp,
        "weights": weight_summary(out_dir / "checkpoints" / "last.ckpt"),
    }


class Runner:
    """Runs cases on demand into ``root`` (each once; a warm-started case runs its source first)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.summaries: dict[str, dict[str, Any]] = {}
        self.dirs: dict[str, Path] = {}

    def __call__(self, name: str) -> dict[str, Any]:
        if name not in self.summaries:
            case = BY_NAME[name]
            if case.warm_start is not None:
                self(case.warm_start)
            out = self.root / name.replace("/", "__")
            # One thread, as the test suite runs: another thread count may sum convolutions in another order.
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                self.summaries[name] = run_case(case, out, self.dirs)
            finally:
                torch.set_num_threads(threads)
            self.dirs[name] = out
        return self.summaries[name]


def _close(a: float, b: float) -> bool:
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return math.isclose(a, b, rel_tol=REL, abs_tol=1e-12)


def differences(expected: Any, got: Any, where: str = "") -> list[str]:
    """Every difference between a stored summary and a new one, one line each: numbers within
    ``REL``, everything else (fingerprints, names, counts) exactly. Keys only in ``got`` are
    allowed (a new entry in results.json moves no number). A weight's sum can cancel to near zero,
    so it is compared to within ``REL`` of the tensor's sum of absolute values."""
    if where.startswith("/weights/") and isinstance(expected, list) and len(expected) == 2 and isinstance(got, list):
        if len(got) != 2:
            return [f"{where}: expected {expected!r}, got {got!r}"]
        out = differences(expected[1], got[1], f"{where}[1]")
        if abs(got[0] - expected[0]) > REL * expected[1]:
            out.insert(0, f"{where}[0]: expected {expected[0]!r}, got {got[0]!r} (change {got[0] - expected[0]:.3g}, "
                          f"sum of absolute values {expected[1]:.3g})")
        return out
    if isinstance(expected, dict):
        if not isinstance(got, dict):
            return [f"{where}: expected a mapping, got {got!r}"]
        out = []
        for k, v in expected.items():
            if k not in got:
                out.append(f"{where}/{k}: missing (expected {v!r})")
            else:
                out += differences(v, got[k], f"{where}/{k}")
        return out
    if isinstance(expected, list):
        if not isinstance(got, list) or len(got) != len(expected):
            return [f"{where}: expected {expected!r}, got {got!r}"]
        return [d for i, (e, g) in enumerate(zip(expected, got)) for d in differences(e, g, f"{where}[{i}]")]
    if isinstance(expected, float) and not isinstance(got, bool) and isinstance(got, (int, float)):
        return [] if _close(expected, float(got)) else [
            f"{where}: expected {expected!r}, got {got!r} (relative change {abs(got - expected) / max(abs(expected), 1e-300):.2e})"]
    return [] if expected == got and type(expected) is type(got) else [f"{where}: expected {expected!r}, got {got!r}"]
