"""``python benchmarks/bench.py``: one meta-training step of metaft against the same computation
written with ``higher`` and with ``torchopt``, measured side by side in one process.

For every algorithm the contenders first pass a correctness gate (the same meta-gradient in
float64 on a small meta-batch of the suite's model), then are timed in alternating rounds
(medians, with the spread reported as noise), and their peak memory during one step is
measured. See ``benchmarks/README.md`` for how to run it and how to read the table.

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` over the step minus what was
allocated before it. On CPU, ``torch.profiler`` with ``profile_memory=True`` records every
allocation and free made through PyTorch's CPU allocator (tracemalloc cannot see them); the
peak of their running sum over the step is the step's peak of live tensor memory. Memory that
libraries allocate behind PyTorch's back (oneDNN scratch space, MKL buffers) is not included.
"""
from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from metaft.algorithms import ANIL, MAML, MetaLearner, MetaSGD, Reptile
from metaft.data import Episode, SinusoidDataModule
from metaft.models import MLP, Conv4
from metaft.models.nets import batched_forward
from metaft.runtime.paths import project_root

ALGORITHMS = ("maml", "fomaml", "metasgd", "anil", "reptile")
CONTENDERS = ("metaft", "metaft-alt", "higher", "torchopt", "higher-same")
# Second-order algorithms, where keeping the outer graph of every task costs memory.
SECOND_ORDER = ("maml", "metasgd", "anil")


# --------------------------------------------------------------------------------- suites
@dataclass(frozen=True)
class Suite:
    """A benchmark problem: the model, the task kind and the shape of one meta-batch."""

    name: str
    task: str
    meta_batch: int
    inner_lr: float
    make_net: Callable[[], nn.Module]
    make_episode: Callable[[int, torch.Generator], Episode]


def _sinusoid_episode(tasks: int, g: torch.Generator) -> Episode:
    return SinusoidDataModule(shots=10, queries=10).sample("train", tasks, g)


def _omniglot_compute_episode(tasks: int, g: torch.Generator, ways: int = 5, shots: int = 1, queries: int = 15) -> Episode:
    """Random images of Omniglot's shape: the compute does not depend on the pixels."""
    sx = torch.rand(tasks, ways * shots, 1, 28, 28, generator=g)
    qx = torch.rand(tasks, ways * queries, 1, 28, 28, generator=g)
    sy = torch.arange(ways).repeat_interleave(shots).expand(tasks, -1).contiguous()
    qy = torch.arange(ways).repeat_interleave(queries).expand(tasks, -1).contiguous()
    return Episode(sx, sy, qx, qy)


SUITES = {
    "sinusoid": Suite("sinusoid", "regression", 25, 0.01, lambda: MLP(1, (40, 40), 1), _sinusoid_episode),
    "omniglot": Suite(
        "omniglot", "classification", 32, 0.4, lambda: Conv4(1, 28, 64, 5, pool="max"), _omniglot_compute_episode
    ),
}


@dataclass(frozen=True)
class Algorithm:
    """One algorithm as the learner class and its inner-loop settings (``conf/algorithm``)."""

    cls: type[MetaLearner]
    first_order: bool = False
    steps: int = 1


ALGOS = {
    "maml": Algorithm(MAML),
    "fomaml": Algorithm(MAML, first_order=True),
    "metasgd": Algorithm(MetaSGD),
    "anil": Algorithm(ANIL),
    "reptile": Algorithm(Reptile, first_order=True, steps=5),
}


def make_learner(
    suite: Suite, algorithm: str, vectorize: str = "auto", seed: int = 0, task_chunk: int | None = None
) -> MetaLearner:
    spec = ALGOS[algorithm]
    torch.manual_seed(seed)
    kw: dict[str, Any] = {} if spec.cls is not MAML else {"first_order": spec.first_order}
    return spec.cls(
        net=suite.make_net(), task=suite.task, inner_lr=suite.inner_lr, inner_steps=spec.steps, vectorize=vectorize,
        task_chunk=task_chunk, **kw
    )


# ----------------------------------------------------------------------------- contenders
# A contender turns (learner, episode) into ``step()``, which does what
# ``MetaLearner.meta_backward`` does: form the meta-gradient of one meta-batch in the ``.grad``
# of the learner's parameters and return (meta-loss, detached query outputs), which a training
# loop needs for its metrics. The others use the learner as the container of the parameters (and
# step sizes). higher and torchopt run the model as their users write it: the same layers and the
# same parameter tensors, in PyTorch's default memory format (``_plain_twin``); metaft's Conv4 runs
# channels_last on a CPU, which is one of the platform's optimisations. ``higher-same`` runs
# higher on metaft's own module object, to separate that from the meta-learning machinery.
Step = Callable[[], Any]


def _zero_grad(params: Sequence[Tensor]) -> None:
    """What ``optimizer.zero_grad()`` does in training, over a list made once (``Module.zero_grad``
    walks the module tree every call)."""
    for p in params:
        p.grad = None


def _loss(task: str) -> Callable[[Tensor, Tensor], Tensor]:
    return F.mse_loss if task == "regression" else F.cross_entropy


def metaft_step(learner: MetaLearner, episode: Episode, vectorize: str | None = None) -> Step:
    """metaft itself; ``vectorize`` overrides the learner's choice (for ``metaft-alt``)."""
    if vectorize is not None:
        learner.vectorize = vectorize

    all_params = list(learner.parameters())

    def step() -> tuple[Tensor, Tensor]:
        _zero_grad(all_params)
        return learner.meta_backward(episode)

    return step


def _accumulate(params: Sequence[Tensor], grads: Sequence[Tensor]) -> None:
    for p, g in zip(params, grads):
        p.grad = g.detach().clone() if p.grad is None else p.grad + g


def _plain_twin(module: nn.Module) -> nn.Module:
    """``module`` with metaft's channels_last convolutions swapped for plain ``nn.Conv2d`` (as
    models are usually written), sharing the same parameter tensors."""
    import copy

    from metaft.models.conv4 import _Conv2d

    twin = copy.deepcopy(module)
    for (name, m), orig in zip(twin.named_modules(), module.modules()):
        for k in list(m._parameters):
            m._parameters[k] = orig._parameters[k]
        if type(m) is _Conv2d:
            m.__class__ = nn.Conv2d
    return twin


def higher_step(learner: MetaLearner, episode: Episode, algorithm: str, plain_model: bool = True) -> Step:
    """The meta-step as in higher's MAML example: ``innerloop_ctx`` per task, one backward per
    task (so only one task's graph is alive at a time). ``plain_model``: the model as usually
    written (plain ``nn.Conv2d``); ``False`` (``higher-same``): metaft's module object itself."""
    import higher

    spec = ALGOS[algorithm]
    loss_fn, T = _loss(learner.task), episode.num_tasks
    module = learner.adapted_module()
    body = learner.net.body
    if plain_model:
        module, body = _plain_twin(module), _plain_twin(body)
    params = list(module.parameters())
    override = None
    if learner.inner_lrs is not None:  # Meta-SGD: one group per tensor, its learned lr as override
        opt = torch.optim.SGD([{"params": [p]} for p in params], lr=learner.inner_lr)
        lrs = learner.step_sizes()
        override = {"lr": [lrs[n] for n, _ in module.named_parameters()]}
    else:
        opt = torch.optim.SGD(params, lr=learner.inner_lr)
    anil, reptile = learner.adapt_head_only, algorithm == "reptile"

    all_params = list(learner.parameters())

    def step() -> tuple[Tensor, Tensor]:
        _zero_grad(all_params)
        outs, total = [], torch.zeros(())
        for t in range(T):
            sx, sy, qx, qy = episode.support_x[t], episode.support_y[t], episode.query_x[t], episode.query_y[t]
            if anil:
                sx, qx = body(sx), body(qx)
            with higher.innerloop_ctx(
                module, opt, copy_initial_weights=False, track_higher_grads=not spec.first_order, override=override
            ) as (fnet, diffopt):
                for _ in range(spec.steps):
                    diffopt.step(loss_fn(fnet(sx), sy))
                if reptile:
                    with torch.no_grad():
                        out = fnet(qx)
                        qloss = loss_fn(out, qy) / T
                        _accumulate(params, [(p - phi) / T for p, phi in zip(params, fnet.parameters())])
                else:
                    out = fnet(qx)
                    qloss = loss_fn(out, qy) / T
                    if spec.first_order:  # fast weights are detached leaves: gradient at phi
                        _accumulate(params, torch.autograd.grad(qloss, list(fnet.parameters())))
                    else:
                        qloss.backward()
                outs.append(out.detach())
                total = total + qloss.detach()
        return total, torch.stack(outs)

    return step


def torchopt_step(learner: MetaLearner, episode: Episode, algorithm: str) -> Step:
    """The meta-step with torchopt's functional optimizers (``torchopt.sgd`` updates applied out
    of place by ``torchopt.apply_updates``), gradients by ``torch.autograd.grad``; one backward
    per task. Meta-SGD is a custom ``GradientTransformation`` scaling by the learned rates."""
    import torchopt
    from torchopt.base import EmptyState, GradientTransformation

    spec = ALGOS[algorithm]
    loss_fn, T = _loss(learner.task), episode.num_tasks
    module, body = _plain_twin(learner.adapted_module()), _plain_twin(learner.net.body)
    names = [n for n, _ in module.named_parameters()]
    params = [p for _, p in module.named_parameters()]
    if learner.inner_lrs is not None:
        lrs = learner.step_sizes()
        alphas = [lrs[n] for n in names]

        def update(updates: Any, state: Any, *, params: Any = None, inplace: bool = True) -> tuple[Any, Any]:
            return tuple(-a * g for a, g in zip(alphas, updates)), state

        impl = GradientTransformation(lambda p: EmptyState(), update)
    else:
        impl = torchopt.sgd(lr=learner.inner_lr)
    anil, reptile = learner.adapt_head_only, algorithm == "reptile"

    all_params = list(learner.parameters())

    def step() -> tuple[Tensor, Tensor]:
        _zero_grad(all_params)
        outs, total = [], torch.zeros(())
        for t in range(T):
            sx, sy, qx, qy = episode.support_x[t], episode.support_y[t], episode.query_x[t], episode.query_y[t]
            if anil:
                sx, qx = body(sx), body(qx)
            fast = tuple(p.detach() for p in params) if reptile else tuple(params)
            state = impl.init(fast)
            for _ in range(spec.steps):
                inner = fast if not (reptile or spec.first_order) else tuple(p.detach().requires_grad_() for p in fast)
                loss = loss_fn(functional_call(module, dict(zip(names, inner)), (sx,)), sy)
                grads = torch.autograd.grad(loss, inner, create_graph=not spec.first_order)
                updates, state = impl.update(grads, state, params=fast, inplace=False)
                fast = torchopt.apply_updates(fast, updates, inplace=False)
            if reptile:
                with torch.no_grad():
                    out = functional_call(module, dict(zip(names, fast)), (qx,))
                    qloss = loss_fn(out, qy) / T
                    _accumulate(params, [(p - phi) / T for p, phi in zip(params, fast)])
            else:
                out = functional_call(module, dict(zip(names, fast)), (qx,))
                qloss = loss_fn(out, qy) / T
                qloss.backward()
            outs.append(out.detach())
            total = total + qloss.detach()
        return total, torch.stack(outs)

    return step


def build_step(contender: str, learner: MetaLearner, episode: Episode, algorithm: str) -> Step:
    if contender == "metaft":
        return metaft_step(learner, episode)
    if contender == "metaft-alt":
        return metaft_step(learner, episode, "false" if learner.use_vmap() else "true")
    if contender == "higher":
        return higher_step(learner, episode, algorithm)
    if contender == "torchopt":
        return torchopt_step(learner, episode, algorithm)
    if contender == "higher-same":
        return higher_step(learner, episode, algorithm, plain_model=False)
    raise ValueError(f"unknown contender {contender!r}; choose from {', '.join(CONTENDERS)}")


def meta_gradient(learner: MetaLearner, step: Step) -> dict[str, Tensor]:
    step()
    return {k: p.grad.detach().clone() for k, p in learner.named_parameters() if p.grad is not None}


# ------------------------------------------------------------------------------ the gate
def check_gradients(
    suite: Suite, algorithm: str, contenders: Sequence[str], device: torch.device, tasks: int = 2, seed: int = 0,
    task_chunk: int | None = None,
) -> float:
    """Raise unless every contender's meta-gradient equals metaft's (float64, ``tasks`` tasks of
    the suite's shape). Returns the largest difference seen, relative to the largest entry."""
    episode = suite.make_episode(tasks, torch.Generator().manual_seed(seed + 1))
    episode = Episode(*(t.to(device, torch.float64) if t.is_floating_point() else t.to(device) for t in episode.__dict__.values()))
    ref_learner = make_learner(suite, algorithm, seed=seed, task_chunk=task_chunk).double().to(device)
    ref = meta_gradient(ref_learner, metaft_step(ref_learner, episode))
    # Relative to the largest gradient entry: some true gradients are zero up to rounding (a
    # convolution bias before BatchNorm), where an entry-wise relative error means nothing.
    scale = max(g.abs().max().item() for g in ref.values()) or 1.0
    worst = 0.0
    for c in contenders:
        learner = make_learner(suite, algorithm, seed=seed, task_chunk=task_chunk).double().to(device)
        got = meta_gradient(learner, build_step(c, learner, episode, algorithm))
        if got.keys() != ref.keys():
            raise AssertionError(f"{algorithm}/{c}: gradients for {sorted(got)} but metaft has {sorted(ref)}")
        for k in ref:
            err = (got[k] - ref[k]).abs().max().item() / scale
            worst = max(worst, err)
            if err > 1e-9:
                raise AssertionError(
                    f"{suite.name}/{algorithm}: {c}'s meta-gradient of {k} differs from metaft's by {err:.1e} "
                    "(relative to the largest gradient entry)"
                )
    return worst


# --------------------------------------------------------------------------- measurements
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(step: Step, device: torch.device) -> float:
    """Peak of live memory allocated during one ``step()``, above what was live before it."""
    if device.type == "cuda":
        _sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        _sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    # "[memory]" events carry signed byte counts: + for an allocation, - for a free.
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        live += e.nbytes()
        peak = max(peak, live)
    return peak / 2**20


def step_flops(learner: MetaLearner, episode: Episode) -> float:
    """Floating-point operations of one meta-step: counted on one task with the per-task loop
    (vmap's batching rules inflate the count), times the meta-batch."""
    from torch.utils.flop_counter import FlopCounterMode

    saved = learner.vectorize
    learner.vectorize = "false"
    try:
        with FlopCounterMode(display=False) as counter:
            metaft_step(learner, episode[0])()
    finally:
        learner.vectorize = saved
    return float(counter.get_total_flops()) * episode.num_tasks


def matmul_gflops(device: torch.device, n: int = 2048, reps: int = 5) -> tuple[float, float]:
    """The machine's practical limit: float32 matmul throughput, per second of wall clock and per
    second of this process's CPU time (medians of ``reps``)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b
    wall, cpu = [], []
    for _ in range(reps):
        _sync(device)
        t, c = time.perf_counter(), time.process_time()
        a @ b
        _sync(device)
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    flop = 2 * n**3 / 1e9
    return flop / statistics.median(wall), flop / statistics.median(cpu)


@dataclass
class Timing:
    """Seconds per step, one entry per round: wall clock, and CPU time of this process (which a
    busy shared machine disturbs less: time spent waiting for a core is not counted)."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.wall)

    @property
    def noise(self) -> float:
        """Half the spread of the middle half of the rounds (interquartile range), relative to the median."""
        if len(self.wall) < 2:
            return float("nan")
        q1, _, q3 = statistics.quantiles(self.wall, n=4, method="inclusive")
        return (q3 - q1) / 2 / self.median


def paired_ratio(slow: Timing, fast: Timing, cpu: bool = False) -> float:
    """Median over rounds of slow/fast, each round's two figures measured moments apart."""
    a, b = (slow.cpu, fast.cpu) if cpu else (slow.wall, fast.wall)
    return statistics.median(x / y for x, y in zip(a, b))


def time_alternating(steps: dict[str, Step], device: torch.device, rounds: int, round_s: float) -> dict[str, Timing]:
    """Run every contender's step in turn, ``rounds`` times, rotating who goes first, so slow
    drifts of a shared machine hit all of them alike. Each round times ``k`` steps, ``k`` chosen
    from a first call so that a round lasts about ``round_s`` seconds."""
    reps = {}
    for name, step in steps.items():
        _sync(device)
        t = time.perf_counter()
        step()
        _sync(device)
        reps[name] = max(1, round(round_s / max(time.perf_counter() - t, 1e-6)))
    names = list(steps)
    out = {n: Timing() for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            _sync(device)
            t, c = time.perf_counter(), time.process_time()
            for _ in range(reps[name]):
                steps[name]()
            _sync(device)
            out[name].wall.append((time.perf_counter() - t) / reps[name])
            out[name].cpu.append((time.process_time() - c) / reps[name])
    return out


# ----------------------------------------------------------------------- data pipeline
def _datamodule(suite: Suite, data_root: Path | None) -> tuple[Any, str]:
    """The suite's real training data module, or ``(None, reason)`` when it is unavailable and
    was not asked for (``--data-root``): the compute suites do not need it."""
    if suite.name == "sinusoid":
        return SinusoidDataModule(shots=10, queries=10, meta_batch_size=suite.meta_batch), ""
    try:
        from metaft.data.omniglot import OmniglotDataModule  # type: ignore[import-not-found]
    except ImportError as e:
        if data_root is not None:
            raise
        return None, f"metaft.data.omniglot is not available ({e})"
    root = data_root or (project_root() / ".." / "shared" / "data" / "omniglot")
    if not root.exists():
        if data_root is not None:
            raise FileNotFoundError(f"--data-root {root} does not exist")
        return None, f"no Omniglot data at {root} (give --data-root)"
    # Pass the episode shape under whichever names the data module takes.
    wanted = {"root": root, "data_dir": root, "path": root, "ways": 5, "shots": 1, "queries": 15,
              "meta_batch_size": suite.meta_batch}
    accepted = inspect.signature(OmniglotDataModule).parameters
    dm = OmniglotDataModule(**{k: str(v) if isinstance(v, Path) else v for k, v in wanted.items() if k in accepted})
    dm.prepare_data()
    dm.setup("fit")
    return dm, ""


def pipeline_rate(dm: Any, device: torch.device, seconds: float = 2.0) -> float:
    """Training meta-batches per second through the real loader (sampling, batching, transfer)."""
    it = iter(dm.train_dataloader())
    next(it).to(device)
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds or n < 3:
        next(it).to(device)
        n += 1
    _sync(device)
    return n / (time.perf_counter() - t)


# --------------------------------------------------------------------------------- main
@dataclass
class Row:
    """One contender on one algorithm. ``vs_X``: X's step time over this one's (>1: faster than
    X), the median over rounds of ratios measured side by side; ``cpu_vs_X`` the same on CPU time."""

    contender: str
    suite: str
    algorithm: str
    path: str
    tasks_per_s: float
    step_ms: float
    noise_pct: float
    cpu_ms: float
    peak_mem_mb: float
    vs_higher: float | None
    vs_torchopt: float | None
    cpu_vs_higher: float | None
    cpu_vs_torchopt: float | None
    gflops: float | None
    cpu_gflops: float | None
    device: str
    threads: int


def _path(learner: MetaLearner) -> str:
    """How metaft runs the tasks: ``loop``, ``vmap`` or ``batched`` (Linear/ReLU models as batched
    matrix products with the gradient written out), with ``/k`` for chunks of k tasks."""
    if not learner.use_vmap():
        return "loop"
    path = "batched" if batched_forward(learner.adapted_module()) is not None else "vmap"
    return path if learner.task_chunk is None else f"{path}/{learner.task_chunk}"


def run_suite(
    suite: Suite, algorithms: Sequence[str], contenders: Sequence[str], device: torch.device, rounds: int, round_s: float,
    gate_tasks: int, seed: int = 0, task_chunk: int | None = None,
) -> tuple[list[Row], dict[str, Any]]:
    """Gate, memory and alternating timing of every contender for every algorithm. ``task_chunk``:
    metaft's ``algorithm.task_chunk`` (the other contenders' steps never read it)."""
    rows: list[Row] = []
    info: dict[str, Any] = {}
    episode = suite.make_episode(suite.meta_batch, torch.Generator().manual_seed(seed)).to(device)
    for algorithm in algorithms:
        t0 = time.perf_counter()
        worst = check_gradients(suite, algorithm, [c for c in contenders if c != "metaft"], device, gate_tasks, seed,
                                task_chunk)
        info[f"gate_{algorithm}"] = worst
        learners = {c: make_learner(suite, algorithm, seed=seed, task_chunk=task_chunk).to(device) for c in contenders}
        steps = {c: build_step(c, learners[c], episode, algorithm) for c in contenders}
        paths = {c: _path(learners[c]) for c in contenders if c.startswith("metaft")}
        for s in steps.values():  # warm-up: lazy initialisation, oneDNN primitive caches
            s()
        mem = {c: peak_memory_mb(steps[c], device) for c in contenders}
        timing = time_alternating(steps, device, rounds, round_s)
        flops = step_flops(learners[contenders[0]], episode) if suite.name == "omniglot" else None
        for c in contenders:
            ms = timing[c].median
            ratio = {o: paired_ratio(timing[o], timing[c]) if o in timing else None for o in ("higher", "torchopt")}
            cpu_ratio = {o: paired_ratio(timing[o], timing[c], cpu=True) if o in timing else None for o in ("higher", "torchopt")}
            rows.append(Row(
                contender=c, suite=suite.name, algorithm=algorithm, path=paths.get(c, "loop"),
                tasks_per_s=suite.meta_batch / ms, step_ms=ms * 1e3, noise_pct=100 * timing[c].noise,
                cpu_ms=statistics.median(timing[c].cpu) * 1e3, peak_mem_mb=mem[c],
                vs_higher=ratio["higher"], vs_torchopt=ratio["torchopt"],
                cpu_vs_higher=cpu_ratio["higher"], cpu_vs_torchopt=cpu_ratio["torchopt"],
                gflops=flops / ms / 1e9 if flops else None,
                cpu_gflops=flops / statistics.median(timing[c].cpu) / 1e9 if flops else None,
                device=str(device), threads=torch.get_num_threads(),
            ))
        print(f"  {algorithm}: gate ok (max rel. diff {worst:.1e}), measured in {time.perf_counter() - t0:.0f} s", flush=True)
    return rows, info


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def print_table(rows: Sequence[Row]) -> None:
    conv = any(r.gflops for r in rows)
    print(f"{'algorithm':<9} {'contender':<11} {'path':<10} {'tasks/s':>8} {'ms/step':>9} {'noise':>6} {'cpu ms':>9} "
          f"{'peak MB':>8} {'x higher':>8} {'x torchopt':>10} {'cpu x higher':>12}" + (f" {'GFLOP/s':>8} {'cpu GFLOP/s':>11}" if conv else ""))
    for r in rows:
        print(
            f"{r.algorithm:<9} {r.contender:<11} {r.path:<10} {r.tasks_per_s:>8.1f} {r.step_ms:>9.2f} "
            f"{_fmt(r.noise_pct, '.0f') + '%':>6} {r.cpu_ms:>9.2f} {r.peak_mem_mb:>8.3f} {_fmt(r.vs_higher, '.2f'):>8} "
            f"{_fmt(r.vs_torchopt, '.2f'):>10} {_fmt(r.cpu_vs_higher, '.2f'):>12}"
            + (f" {_fmt(r.gflops, '.1f'):>8} {_fmt(r.cpu_gflops, '.1f'):>11}" if conv else "")
        )


def print_verdicts(rows: Sequence[Row], pipeline: float | None, min_speedup: float | None = None) -> bool:
    """Verdicts from this run's own figures: metaft against the fastest other contender (and, for
    second order, the leanest one), and whether sampling keeps up with the fastest meta-step;
    ``min_speedup``: a required ratio over higher, when one is given. Returns whether all hold."""
    ok = True
    by = {(r.algorithm, r.contender): r for r in rows}
    for algorithm in dict.fromkeys(r.algorithm for r in rows):
        m = by.get((algorithm, "metaft"))
        others = [r for r in rows if r.algorithm == algorithm and r.contender not in ("metaft", "metaft-alt")]
        if m is None or not others:
            continue
        fastest = min(others, key=lambda r: r.step_ms)
        ratio = fastest.step_ms / m.step_ms
        faster = ratio > 1
        line = f"  {algorithm:<8} {ratio:6.2f}x the fastest other ({fastest.contender}): {'faster' if faster else 'SLOWER'}"
        ok &= faster
        h = by.get((algorithm, "higher"))
        if min_speedup is not None and h is not None:
            met = m.vs_higher >= min_speedup
            line += f"; {m.vs_higher:.2f}x higher (required >= {min_speedup}x): {'met' if met else 'NOT MET'}"
            ok &= met
        same = by.get((algorithm, "higher-same"))
        if same is not None:  # against higher running metaft's own module: the machinery alone
            line += f" [vs higher-same: {same.step_ms / m.step_ms:.2f}x, CPU time {same.cpu_ms / m.cpu_ms:.2f}x]"
        if algorithm in SECOND_ORDER:
            leanest = min(others, key=lambda r: r.peak_mem_mb)
            mem = m.peak_mem_mb <= leanest.peak_mem_mb
            ok &= mem
            line += (f";  peak memory {m.peak_mem_mb:.3f} MB vs {leanest.peak_mem_mb:.3f} MB ({leanest.contender}): "
                     f"{'at or below' if mem else 'ABOVE'}")
        print(line)
    if pipeline is not None:
        keeps_up = pipeline >= 1
        print(f"  data pipeline: samples {pipeline:.0f}x as fast as the fastest metaft meta-step consumes: "
              f"{'keeps up' if keeps_up else 'TOO SLOW'}")
        ok &= keeps_up
    return ok


def load_summary() -> str:
    try:
        return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "load average unavailable"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python benchmarks/bench.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", choices=sorted(SUITES), default="sinusoid")
    p.add_argument("--algorithms", default=",".join(ALGORITHMS), help=f"comma-separated subset of {','.join(ALGORITHMS)}")
    p.add_argument("--contenders", default=None,
                   help="comma-separated subset of metaft (vectorize=auto), metaft-alt (the other of vmap/loop), higher, "
                        "torchopt (both with the model in PyTorch's default layout, as their users write it), "
                        "higher-same (higher on metaft's own channels_last module: the machinery alone); "
                        "default: the first four on sinusoid, metaft,higher,torchopt on omniglot (metaft-alt, its vmap "
                        "path, is 2-3x slower on a CPU and would double the run time)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds per contender (default: 7 sinusoid, 3 omniglot)")
    p.add_argument("--round-seconds", type=float, default=0.3, help="target duration of one timed round")
    p.add_argument("--gate-tasks", type=int, default=2, help="tasks in the float64 meta-gradient check")
    p.add_argument("--meta-batch", type=int, default=None, help="override the suite's meta-batch (smoke tests)")
    p.add_argument("--data-root", type=Path, default=None, help="Omniglot data (default: ../shared/data/omniglot)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--min-speedup", type=float, default=None,
                   help="a required ratio of metaft's tasks/s over higher's (a verdict line says whether it is met)")
    p.add_argument("--task-chunk", type=int, default=None,
                   help="metaft's algorithm.task_chunk: tasks per backward on its vectorized path (less memory)")
    p.add_argument("--json", type=Path, default=None, help="write the rows here as a JSON list")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    default = ("metaft", "metaft-alt", "higher", "torchopt") if args.suite == "sinusoid" else ("metaft", "higher", "torchopt")
    contenders = [c.strip() for c in (args.contenders or ",".join(default)).split(",") if c.strip()]
    for a in algorithms:
        if a not in ALGOS:
            raise SystemExit(f"--algorithms: unknown {a!r}; choose from {', '.join(ALGORITHMS)}")
    for c in contenders:
        if c not in CONTENDERS:
            raise SystemExit(f"--contenders: unknown {c!r}; choose from {', '.join(CONTENDERS)}")
    if "metaft" not in contenders:
        contenders.insert(0, "metaft")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available in this PyTorch build or machine")
    for flag, value in (("--task-chunk", args.task_chunk), ("--threads", args.threads), ("--rounds", args.rounds),
                        ("--meta-batch", args.meta_batch), ("--gate-tasks", args.gate_tasks)):
        if value is not None and value < 1:
            raise SystemExit(f"{flag} must be >= 1, got {value}")
    if args.round_seconds <= 0:
        raise SystemExit(f"--round-seconds must be > 0, got {args.round_seconds}")
    if args.threads:
        torch.set_num_threads(args.threads)
    busy = hasattr(os, "getloadavg") and os.getloadavg()[0] > (os.cpu_count() or 1)
    if device.type == "cpu" and busy and torch.get_num_threads() > 1:
        print(f"note: the machine is busy ({load_summary()}, {os.cpu_count()} CPUs); with several threads per process "
              "a descheduled thread stalls the others, so consider --threads 1 for steadier figures")
    suite = SUITES[args.suite]
    if args.meta_batch:
        suite = Suite(**{**suite.__dict__, "meta_batch": args.meta_batch})
    rounds = args.rounds or (7 if suite.name == "sinusoid" else 3)

    print(f"bench  suite={suite.name}  meta-batch={suite.meta_batch}  device={device}  threads={torch.get_num_threads()}  "
          f"torch {torch.__version__}  python {platform.python_version()}  {load_summary()}")
    limit, cpu_limit = matmul_gflops(device)
    print(f"machine: float32 matmul (2048x2048, median of 5) {limit:.1f} GFLOP/s of wall clock, {cpu_limit:.1f} "
          "GFLOP per CPU-second - the practical limit", flush=True)
    rows, info = run_suite(suite, algorithms, contenders, device, rounds, args.round_seconds, args.gate_tasks,
                           task_chunk=args.task_chunk)

    dm, why = _datamodule(suite, args.data_root)
    pipeline = None
    if dm is not None:
        eps = pipeline_rate(dm, device, seconds=max(0.2, 5 * args.round_seconds))
        fastest = max(r.tasks_per_s / suite.meta_batch for r in rows if r.contender == "metaft")
        pipeline = eps / fastest
        print(f"data pipeline: {eps:.0f} meta-batches/s sampled vs {fastest:.1f} meta-steps/s consumed by the fastest metaft step")
    else:
        print(f"data pipeline: not measured for {suite.name}: {why}")

    print(f"\n{len(rows)} rows, {rounds} alternating rounds each; noise: half the interquartile range of the rounds; "
          f"ratios: median over rounds of side-by-side ratios; {load_summary()}")
    print_table(rows)
    if suite.name == "omniglot":
        print(f"GFLOP/s: useful work (one task's FLOPs counted by FlopCounterMode on the loop path, x meta-batch) per "
              f"second of wall clock / of CPU time; the machine's matmul limit: {limit:.1f} / {cpu_limit:.1f}")
    print("targets:")
    print_verdicts(rows, pipeline, args.min_speedup)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        extra = {"matmul_gflops": limit, "matmul_cpu_gflops": cpu_limit, "pipeline_ratio": pipeline, **info}
        args.json.write_text(json.dumps([{**asdict(r), **extra} for r in rows], indent=1))
        print(f"rows written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
