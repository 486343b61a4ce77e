"""The golden runs: a fixed set of short seeded runs through the real entry point, and what each
run is summarised by, so that a refactor can check that it moved no number.

Stage 1: every algorithm that regresses runs on the sinusoid, and one run per learner kind on
Omniglot (second-order MAML, ANIL, Reptile with the carried Adam inner optimiser on support
mini-batches, ProtoNet, MetaOptNet, pre-training, Baseline++, Meta-Baseline warm-started from the
Baseline++ run). Then the eval stage on two of those checkpoints, and stage 2 (fine-tuning) from
four. A run is summarised by its ``results.json`` (test and validation metrics, the test episodes'
fingerprint, the training-stream version, ...), for stage 1 the fingerprints of its validation
episodes and of the meta-batches it trained on, and for training runs the float64 sum and sum of
absolute values of every tensor of the final checkpoint (``last.ckpt``), so a change anywhere in
training, evaluation or the data is seen even where a few-episode accuracy does not move.

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
# Metrics and weight summaries. Two recordings in a row agree exactly, so any tolerance would do for
# unchanged code; 1e-6 lets a refactor reorder the float32 arithmetic of a score (a mean taken in
# another order) and still catches a 1% change of an inner lr in every run that uses it. Training is
# not that forgiving: on Omniglot a few Adam steps amplify last-bit differences to 1e-3 (see
# environment()), so a change that reorders training arithmetic fails here and must be named.
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
    """One golden run: ``name`` (``<dataset>/<label>``), the config it runs (``--config-name``) with
    its Hydra overrides, and optionally an earlier case whose ``best.ckpt`` is given as ``source_key``
    (``algorithm.init_ckpt`` of a warm start, ``ckpt_path`` of eval, ``meta_ckpt`` of fine-tuning)."""

    name: str
    overrides: tuple[str, ...]
    source: str | None = None
    source_key: str = "algorithm.init_ckpt"
    config: str = "train"

    @property
    def dataset(self) -> str:
        return self.name.split("/", 1)[0]

    @property
    def algorithm(self) -> str | None:
        """The ``algorithm=`` of a training case (None for eval and fine-tuning)."""
        return next((o.split("=", 1)[1] for o in self.overrides if o.startswith("algorithm=")), None)


def _sinusoid(algorithm: str, *extra: str, label: str | None = None) -> Case:
    return Case(f"sinusoid/{label or algorithm}", (f"algorithm={algorithm}", *_COMMON, *_SINUSOID, *extra))


def _omniglot(algorithm: str, *extra: str, label: str | None = None, warm_start: str | None = None) -> Case:
    return Case(f"omniglot/{label or algorithm}", (f"algorithm={algorithm}", *_COMMON, *_OMNIGLOT, *extra), warm_start)


# Stage 2: a few fine-tuning steps with two validations; a quick test.
_FINETUNE = ("seed=3", "trainer.max_steps=6", "trainer.val_check_interval=3", "checkpoint.every_n_train_steps=3",
             "logging.images=false", "progress=log")


def _finetune(name: str, source: str, *extra: str) -> Case:
    return Case(name, (*_FINETUNE, *extra), source, "meta_ckpt", "finetune")


def _eval(name: str, source: str, *extra: str) -> Case:
    return Case(name, ("progress=log", *extra), source, "ckpt_path", "eval")


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
    _omniglot("simpleshot"),
    # The evaluation stage: a checkpoint scored again with other settings on top of its stored config.
    _eval("sinusoid/eval_metasgd", "sinusoid/metasgd", "algorithm.eval_inner_steps=3"),
    _eval("omniglot/eval_maml_inductive", "omniglot/maml", "algorithm.eval_inner_steps=2", "++model.bn=inductive"),
    # Stage 2 from those checkpoints: the head rules (auto keeps MAML's trained head; ProtoNet's starts
    # from prototypes), Meta-SGD's step sizes, pre-training as the baseline init.
    _finetune("sinusoid/finetune_maml", "sinusoid/maml", "target=sinusoid", "target.shots=5"),
    _finetune("sinusoid/finetune_metasgd_lrs", "sinusoid/metasgd", "target=sinusoid", "target.shots=5",
              "metasgd_lrs=true", "finetuner.optimizer._target_=torch.optim.SGD", "finetuner.optimizer.lr=1.0"),
    _finetune("omniglot/finetune_protonet", "omniglot/protonet", "target=omniglot", "target.ways=5", "target.shots=2"),
    _finetune("omniglot/finetune_pretrained", "omniglot/pretrain", "init=pretrained", "target=omniglot",
              "target.ways=5", "target.shots=1", "head_init=zero"),
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
    directories (for ``source``). Returns the case's summary (what ``golden.json`` stores)."""
    import hydra
    from hydra.core.global_hydra import GlobalHydra

    from metaft.stages import main
    from tests.conftest import compose

    overrides = list(case.overrides)
    if case.source is not None:
        overrides.append(f"{case.source_key}={done[case.source] / 'checkpoints' / 'best.ckpt'}")
    summary: dict[str, Any] = {
        "config": case.config,
        "overrides": list(case.overrides) + ([f"{case.source_key}=<{case.source} best.ckpt>"] if case.source else []),
    }
    try:
        cfg = compose(case.config, overrides, out_dir)
        main(cfg)
        if case.config == "train":
            dm = hydra.utils.instantiate(cfg.dataset)
            # Learners that train on labelled batches (pre-training) size them with algorithm.batch_size.
            labelled = cfg.algorithm.get("batch_size")
            summary["train_batches_fingerprint"] = train_fingerprint(dm, int(cfg.trainer.max_steps), labelled)
            summary["val_episodes_fingerprint"] = dm.fingerprint("val")
    finally:
        GlobalHydra.instance().clear()
    results = json.loads((out_dir / "results.json").read_text())
    # Paths name this run's directory; only which checkpoint was tested is a result.
    # class_check is a sentence for people (its verdict is allow_seen_classes and the run having started).
    kept = {k: v for k, v in sorted(results.items())
            if k not in ("ckpt", "overrides", "meta_ckpt", "init_ckpt", "class_check")}
    if "ckpt" in results:
        kept["ckpt"] = Path(results["ckpt"]).name if results["ckpt"] else None  # best.ckpt or last.ckpt
    summary["results"] = kept
    if case.config != "eval":
        summary["weights"] = weight_summary(out_dir / "checkpoints" / "last.ckpt")
    return summary


class Runner:
    """Runs cases on demand into ``root``: each once, a case's ``source`` before it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.summaries: dict[str, dict[str, Any]] = {}
        self.dirs: dict[str, Path] = {}

    def __call__(self, name: str) -> dict[str, Any]:
        if name not in self.summaries:
            case = BY_NAME[name]
            if case.source is not None:
                self(case.source)
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
