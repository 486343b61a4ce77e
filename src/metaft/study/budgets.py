"""The study's stage-1 budget axis. A budget is the number of training examples (images, or
sinusoid points) a stage-1 run processes: a meta-step counts its support and query examples, a
pre-training step its batch. Each init trains once at its converged recipe (its own budget) and,
for every budget of ``stage1.budgets``, once more with ``trainer.max_steps`` (and so every schedule
sized to ``trainer.max_steps``) cut to that many examples: the arm ``<init>@<budget>``, e.g.
``maml@150k``. Arms enter the study as inits of their own (``inits`` and ``variants`` expanded
before anything runs), so choices, rows and intervals treat them like any other init."""
from __future__ import annotations

import re
from typing import Iterator, Sequence

from omegaconf import DictConfig, OmegaConf, open_dict

from metaft.study import stage1

SEP = "@"
FULL = "full recipe"  # the arms trained with their whole recipe: converged only if training.criterion says so


def label(budget: int) -> str:
    """150000 -> '150k', 1500000 -> '1.5M', 37500 -> '37.5k'."""
    for unit, size in (("M", 1_000_000), ("k", 1_000)):
        if budget >= size:
            return f"{budget / size:g}{unit}"
    return str(budget)


def split(name: str) -> tuple[str, str | None]:
    """``'maml@150k'`` -> ``('maml', '150k')``; an init without a budget -> ``(name, None)``."""
    init, _, budget = name.partition(SEP)
    return init, budget or None


def compose_train(overrides: Sequence[str]) -> DictConfig:
    """The training config ``train.py OVERRIDES`` would run with (Hydra's ``hydra`` node left out)."""
    from metaft.runtime.compose import compose
    from metaft.runtime.paths import conf_dir, register_resolvers

    register_resolvers()  # the configs' own interpolations (the data directory) resolve when read
    return compose(conf_dir(), "train", [o for o in overrides if not o.startswith("hydra.")])


def examples_per_step(cfg: DictConfig) -> int:
    """Training examples one optimiser step of this run processes: a batch learner's batch
    (``algorithm.batch_size``), else meta-batch x ways x (shots + queries) of its training tasks
    (regression: one 'way')."""
    batch = OmegaConf.select(cfg, "algorithm.batch_size", default=None)
    if batch:
        return int(batch)
    d = cfg.dataset
    ways = d.get("train_ways") or d.get("ways") or 1
    shots = d.get("train_shots") or d.get("shots")
    return int(d.get("meta_batch_size", 1)) * int(ways) * (int(shots) + int(d.get("queries", 0)))


def train_overrides(cfg: DictConfig, algorithm: str) -> list[str]:
    """The overrides of one stage-1 run of ``algorithm`` (without seed and run directory)."""
    v = stage1.variant(cfg, algorithm)
    experiment = cfg.stage1.get("experiment")
    return [*([f"experiment={experiment}"] if experiment else []), f"algorithm={v[0]}", *map(str, cfg.stage1.overrides),
            *(o for o in v[1:] if "CKPT(" not in o)]


def budget_of(train_cfg: DictConfig) -> dict[str, int]:
    """Steps, examples per step and examples (the budget) of a composed training config."""
    steps, per = int(train_cfg.trainer.max_steps), examples_per_step(train_cfg)
    return {"steps": steps, "examples_per_step": per, "examples": steps * per}


def schedule(train_cfg: DictConfig, at: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0)) -> list[float]:
    """The learning-rate factor (lr / initial lr) at these fractions of ``trainer.max_steps``: equal
    for two budgets when the schedule is sized to the budget."""
    import torch

    sched = OmegaConf.select(train_cfg, "algorithm.scheduler", default=None)
    if sched is None:
        return [1.0 for _ in at]
    from hydra.utils import instantiate

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    s = instantiate(sched)(opt)
    steps = int(train_cfg.trainer.max_steps)
    marks = {min(steps, round(a * steps)) for a in at}
    out: dict[int, float] = {}
    for t in range(steps + 1):
        if t in marks:
            out[t] = opt.param_groups[0]["lr"]
        if t < steps:
            opt.step()
            s.step()
    return [out[min(steps, round(a * steps))] for a in at]


def arm_overrides(cfg: DictConfig, algorithm: str, budget: int, full: DictConfig | None = None) -> list[str]:
    """``trainer.max_steps`` (and validation and checkpoint intervals) of ``algorithm``'s run cut to
    ``budget`` examples; refused when the recipe's schedule is not sized to ``trainer.max_steps``.
    ``full``: the recipe's composed training config, when the caller has it already."""
    full = compose_train(train_overrides(cfg, algorithm)) if full is None else full
    b = budget_of(full)
    steps = max(1, round(budget / b["examples_per_step"]))
    if steps >= b["steps"]:
        raise ValueError(f"stage1.budgets: {budget} examples is not below {algorithm}'s converged recipe "
                         f"({b['steps']} steps x {b['examples_per_step']} = {b['examples']} examples); give smaller budgets")
    cut = [f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}", f"checkpoint.every_n_train_steps={steps}"]
    short = compose_train([*train_overrides(cfg, algorithm), *cut])
    a, c = schedule(full), schedule(short)
    tol = 1e-3 + 4.0 / steps  # the marks fall on whole steps: a few steps' worth of schedule apart
    if any(abs(x - y) > tol * max(1.0, abs(x)) for x, y in zip(a, c)):
        raise ValueError(
            f"stage1.budgets: {algorithm}'s learning-rate schedule is not sized to trainer.max_steps (lr factor at "
            f"0, 1/4, 1/2, 3/4, 1 of training: {[round(v, 4) for v in a]} at its recipe, {[round(v, 4) for v in c]} "
            f"at {steps} steps); write its steps as ${{trainer.max_steps}} in the recipe, or leave it out of the budgets "
            "(stage1.budget_inits)")
    return cut


def budget_inits(cfg: DictConfig) -> list[str]:
    """The inits trained at the smaller budgets: ``stage1.budget_inits``, else every trained init
    that starts from no other init's checkpoint (an init built on another, such as Meta-Baseline on
    pre-training, is trained at its converged recipe only: its budget is the sum of both)."""
    given = cfg.stage1.get("budget_inits")
    if given is not None:
        unknown = [i for i in given if i not in cfg.inits or cfg.inits[i] is None]
        if unknown:
            raise ValueError(f"stage1.budget_inits: {unknown} are not trained inits of this study "
                             f"({[i for i, a in cfg.inits.items() if a is not None]})")
        return [str(i) for i in given]
    return [i for i, a in cfg.inits.items() if a is not None and not stage1.needs(cfg, a)]


def expand(cfg: DictConfig) -> DictConfig:
    """``cfg`` with an init ``<init>@<budget>`` (and its variant) per budget-trained init and
    budget of ``stage1.budgets``; the unexpanded config when there are none."""
    budgets = [int(b) for b in cfg.stage1.get("budgets") or []]
    if not budgets:
        return cfg
    if any(b <= 0 for b in budgets) or len(set(budgets)) != len(budgets):
        raise ValueError(f"stage1.budgets={budgets}: give distinct positive numbers of training examples")
    cfg = OmegaConf.create(OmegaConf.to_container(cfg))
    with open_dict(cfg):
        cfg.setdefault("variants", {})
        for init in budget_inits(cfg):
            algorithm = str(cfg.inits[init])
            v = stage1.variant(cfg, algorithm)
            full = compose_train(train_overrides(cfg, algorithm))  # once for all of the init's budgets
            for b in sorted(budgets, reverse=True):
                name = f"{init}{SEP}{label(b)}"
                cfg.variants[name] = [*v, *arm_overrides(cfg, algorithm, b, full)]
                cfg.inits[name] = name
                if init in (cfg.get("pretrained") or []):
                    cfg.pretrained.append(name)
    return cfg


def budget_value(text: str) -> float:
    """``'150k'`` -> 150000.0."""
    m = re.fullmatch(r"([0-9.]+)([kM]?)", text)
    if m is None:
        raise ValueError(f"not a budget label: {text!r}")
    return float(m.group(1)) * {"": 1, "k": 1e3, "M": 1e6}[m.group(2)]


def pairs(names: Sequence[str], meta: str, pretrained: str) -> Iterator[tuple[str, str, str]]:
    """``(budget label, meta arm, pre-trained arm)`` for every budget both were trained at
    (``FULL``, the whole recipes, first; then largest to smallest)."""
    have = set(names)
    if meta in have and pretrained in have:
        yield FULL, meta, pretrained
    labels = {split(n)[1] for n in names} - {None}
    for b in sorted(labels, key=budget_value, reverse=True):
        m, p = f"{meta}{SEP}{b}", f"{pretrained}{SEP}{b}"
        if m in have and p in have:
            yield b, m, p
