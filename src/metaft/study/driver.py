"""The data-efficiency study, end to end:

    python -m metaft.study omniglot|omniglot_cpu|sinusoid|mini_imagenet|image_folder [--out DIR] [--ckpt INIT=PATH[,PATH...]] [key=value ...]
    python -m metaft.study report DIR

``conf/study/<name>.yaml`` holds the protocol (target problems, adaptations, stage-1 budget,
inits); ``key=value`` arguments override it (``target.problems=100``). The driver (1) checks every
given checkpoint, (2) trains the missing stage-1 checkpoints (``stage1``), (3) adapts every
(init, stage-1 seed) on the same target problems for each N, K and adaptation, writing one file
of rows per piece under ``DIR/rows/`` (a rerun with the same ``--out`` continues where it
stopped), (4) writes ``study.csv``, ``study.md`` and the plots (also into ``DIR/tensorboard``).
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from metaft.core.objective import Objective
from metaft import checkpoint
from metaft.runtime.io import atomic_write_text
from metaft.runtime.run_dirs import claim
from metaft.study import analysis, budget_answer, budgets, choices, evaluate, labels, protocol, speed, stage1, stats, targets, training
from metaft.study import claims, controls
from metaft.study import presets
from metaft.study import datasets
from metaft.study.problems import problem_fingerprints
from metaft.study.stats import curves_convergence

CONFIG = "study_config.yaml"
# Settings read by the report alone (no row depends on them): a continued study may change them.
REPORT_ONLY = ("intervals.", "bootstrap.", "labels.")


def load_config(name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Study ``name`` as Hydra composes it (``study/presets.py``: a preset's defaults list names the
    study it changes), then ``key=value`` overrides of its existing keys."""
    cfg = presets.load(name)
    for o in overrides:
        key = o.split("=", 1)[0]
        if "=" not in o or OmegaConf.select(cfg, key, default="__missing__") == "__missing__":
            raise ValueError(f"study override {o!r}: write KEY=VALUE with a key of conf/study/{name}.yaml")
        # The value replaces the setting whole (a dict of inits is not merged into the default one).
        OmegaConf.update(cfg, key, OmegaConf.select(OmegaConf.from_dotlist([o]), key), merge=False)
    return cfg


def output_dir(cfg: DictConfig, out: str | None) -> Path:
    """A new claimed directory, or ``out``: new, or a study of the same config to continue."""
    if out is None:
        # Relative to the working directory, as Hydra's run directories are (outputs/train/runs/...):
        # a checkout run from its root writes where it always did, an installed copy where it runs.
        return claim(Path.cwd() / "outputs" / "study" / cfg.name / time.strftime("%Y-%m-%d_%H-%M-%S"))
    d = Path(out)
    saved = d / CONFIG
    if saved.is_file():
        before, now = _flat(OmegaConf.load(saved)), _flat(cfg)
        # A setting added to the protocol since, at its neutral value (null, []), changes nothing done.
        diff = [k for k in set(before) | set(now) if not k.startswith(REPORT_ONLY)
                and (now[k] not in (None, []) if k not in before else before[k] != now.get(k, "<removed>"))]
        if diff:
            raise ValueError(f"--out {d} holds a study with other settings ({', '.join(sorted(diff)[:5])}); continue it "
                             "with the same settings, or choose another --out")
    elif d.exists() and any(d.iterdir()):
        raise ValueError(f"--out {d} is not empty and holds no study ({CONFIG} is missing); choose another directory")
    d.mkdir(parents=True, exist_ok=True)
    return d


def _flat(cfg: DictConfig) -> dict[str, object]:
    out: dict[str, object] = {}

    def walk(prefix: str, node: object) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}{k}.", v)
        else:
            out[prefix.rstrip(".")] = node

    walk("", OmegaConf.to_container(cfg))
    return out


def given_checkpoints(cfg: DictConfig, specs: Sequence[str]) -> dict[str, list[str]]:
    """``INIT=PATH[,PATH...]`` (one per stage-1 seed), each checked against the study before any run."""
    given: dict[str, list[str]] = {}
    for spec in specs:
        init, _, paths = spec.partition("=")
        if init not in cfg.inits or not paths:
            raise ValueError(f"--ckpt {spec!r}: write INIT=PATH[,PATH...] with INIT one of {', '.join(cfg.inits)}")
        given[init] = paths.split(",")
        if len(given[init]) != len(cfg.stage1.seeds):
            raise ValueError(f"--ckpt {init}: {len(given[init])} checkpoints for {len(cfg.stage1.seeds)} stage-1 seeds "
                             f"({list(cfg.stage1.seeds)}); give one per seed, comma-separated")
        for p in given[init]:
            evaluate.check(init, checkpoint.load(p, what=f"--ckpt {init}"), cfg)
    return given


def _write_rows(path: Path, rows: list[dict[str, object]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=analysis.FIELDS)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())  # a piece is there whole or not at all


def run(cfg: DictConfig, out: Path, given: dict[str, list[str]]) -> Path | None:
    """Adapt every (init, seed) on the target problems; return ``study.csv``, or None when other
    processes of this study still hold pieces (the last of them writes it)."""
    OmegaConf.save(cfg, out / CONFIG)
    dataset_cls = hydra.utils.get_class(cfg.dataset._target_)
    objective = Objective(dataset_cls.task)
    ckpts = stage1.train_missing(cfg, out, given)
    training.record(out, ckpts)
    for (init, seed), ckpt in ckpts.items():
        if ckpt is not None:
            evaluate.check(init, checkpoint.load(ckpt, what=f"the checkpoint of init {init}"), cfg)
    inits = {key: evaluate.Init(key[0], key[1], ckpt, cfg, objective) for key, ckpt in ckpts.items()}
    t = cfg.target
    for ways in t.ways:
        # The probe's own (larger, cheap) validation set, when it has one, extends fine-tuning's: problem i
        # depends on i alone, so fine-tuning's are its first ones.
        n_val = max(validation_problems(cfg), probe_validation_problems(cfg))
        sets = targets.Problems(cfg, ways, n_val, objective.regression)  # drawn when needed
        for shots in t.shots:
            piece = row_file(out, ways, shots)
            todo = [(key, a) for key in inits for a in evaluate.ADAPTATIONS
                    if not row_file(out, ways, shots, *key, a).is_file()]
            if not todo:
                continue
            test, val = sets.at(shots)  # `all`: every example left after the test ones
            fps = [fp for ep in test for fp in problem_fingerprints(ep)]
            n_ft = int(t.finetune_problems)
            chooser = choices.Chooser(inits, {"probe": targets.first(val, probe_validation_problems(cfg)),
                                              "other": targets.first(val, validation_problems(cfg))},
                                      cfg, objective, piece, f"N={ways} K={shots}")
            # One claim per (init, adaptation): its choice on validation problems serves all its seeds,
            # so a second process sharing this --out takes another unit rather than choosing it again.
            for unit in dict.fromkeys((init, a) for (init, _), a in todo):
                with claims.held(piece / f"{unit[0]}_{unit[1]}.claim") as mine:
                    if not mine:
                        continue  # another process of this study is on it
                    for (init, seed), adaptation in todo:
                        if (init, adaptation) != unit or row_file(out, ways, shots, init, seed, adaptation).is_file():
                            continue
                        began = time.perf_counter()
                        rows = _adapt(inits[init, seed], adaptation, shots, test, chooser, n_ft, fps, cfg, objective,
                                      label=f"N={ways} K={shots} {init} seed {seed} {adaptation}")
                        common = {"init": init, "seed": seed, "ways": ways, "shots": shots, "adaptation": adaptation,
                                  "bn": cfg.adapt.bn}
                        _write_rows(row_file(out, ways, shots, init, seed, adaptation), [{**common, **r} for r in rows])
                        print(f"N={ways} K={shots} {init} seed {seed} {adaptation}: {len(rows)} problems in "
                              f"{time.perf_counter() - began:.1f}s", flush=True)
    busy = claims.others(out / "rows")
    if busy:  # the last process to finish writes the table and the report
        return None
    controls.run(cfg, out, inits, objective)  # controls with known answers, beside the rows
    rows = [r for f in sorted((out / "rows").rglob("*.csv")) for r in analysis.read_rows(f)]
    _write_rows(out / "study.csv", rows)
    return out / "study.csv"


def validation_problems(cfg: DictConfig) -> int:
    """The validation problems that choose full fine-tuning's settings and the learners' test-time
    step size and count: ``adapt.finetune.val_problems``, but never more than the test problems
    fine-tuned (``target.problems``, ``target.finetune_problems``), so a small study is not spent choosing."""
    t = cfg.target
    return max(1, min(int(cfg.adapt.finetune.val_problems), int(t.problems), int(t.finetune_problems)))


def probe_validation_problems(cfg: DictConfig) -> int:
    """The validation problems that choose the probe's regularisation: ``adapt.probe.val_problems``
    (null: fine-tuning's, ``validation_problems``), never more than ``target.problems``."""
    n = cfg.adapt.probe.get("val_problems")
    return validation_problems(cfg) if n is None else max(1, min(int(n), int(cfg.target.problems)))


def _adapt(init: evaluate.Init, adaptation: str, shots: object, test: list, chooser: choices.Chooser, n_ft: int,
           fps: list[str], cfg: DictConfig, objective: Objective, label: str = "") -> list[dict[str, object]]:
    """One (init, seed, N, K, adaptation): a row per problem (none when it does not apply). Full
    fine-tuning, the long piece, prints a line after each chunk."""
    if adaptation == "probe":
        c = chooser(init.name, "probe")  # its regularisation, chosen on validation problems when a list
        values = np.concatenate([evaluate.probe(init, ep, cfg, objective, c.value) for ep in test])
        return [{"problem": i, "fingerprint": fp, "metric": float(v), "chosen_reg": c.value}
                for i, (fp, v) in enumerate(zip(fps, values))]
    if adaptation == "inner":
        ways = _ways(test[0], objective)
        learner = init.learner
        if not cfg.adapt.inner or learner is None or (
                ways is not None and not learner.sizes_head_per_episode and learner.net.head.out_features != ways):
            return []
        extra: dict[str, object] = {}
        c = chooser(init.name, "inner") if choices.adapts_at_test(init) else None
        with choices.scaled_step(init, c.lr_scale if c else 1.0):
            values = np.concatenate([evaluate.inner(init, ep, ways, objective, c.steps if c else None) for ep in test])
            if c is not None:  # the learned step sizes of Meta-SGD are recorded as scale 1 of its own
                extra = {"chosen_step": c.steps, "chosen_lr": learner.eval_inner_lr}
        return [{"problem": i, "fingerprint": fp, "metric": float(v), **extra}
                for i, (fp, v) in enumerate(zip(fps, values))]
    # Full fine-tuning: start, optimiser, step size and count chosen on validation problems, then the test problems.
    only = cfg.adapt.finetune.get("shots")
    if only is not None and str(shots) not in {str(k) for k in only}:
        return []  # fine-tuned at the Ks of adapt.finetune.shots only (its cost grows with K)
    listed = cfg.adapt.finetune.get("inits")
    if listed is not None and init.name not in {str(i) for i in listed}:
        return []  # full fine-tuning for the inits of adapt.finetune.inits only (the costliest adaptation)
    began = time.perf_counter()
    c = chooser(init.name, "finetune")
    total = min(n_ft, sum(ep.num_tasks for ep in test))
    print(f"{label}: fine-tuning {total} test problems", flush=True)
    rows: list[dict[str, object]] = []
    done = 0
    for ep in test:
        take = min(ep.num_tasks, n_ft - done)
        if take <= 0:
            break
        curves = choices.finetune_curves(init, ep[:take], cfg, objective, c)
        j = curves.steps.index(c.step)
        sign = -1.0 if objective.regression else 1.0  # convergence reads "higher is better"
        conv = curves_convergence(curves.steps, sign * curves.acc.double().numpy(), curves.seconds.numpy(),
                                  tol=float(cfg.tolerance))
        for i in range(take):
            rows.append({"problem": done + i, "fingerprint": fps[done + i], "metric": float(curves.acc[i, j]),
                         "chosen_step": c.step, "chosen_lr": c.lr, "chosen_start": c.start,
                         "chosen_optimizer": c.optimizer, "steps_to_final": conv["steps"][i],
                         "seconds_to_final": conv["seconds"][i], "auc": sign * conv["auc"][i],
                         "seconds_per_step": float(curves.seconds[i, -1]) / max(1, curves.steps[-1]),
                         "curve": analysis.format_curve(curves.steps, curves.acc[i].tolist())})
        done += take
        spent = time.perf_counter() - began
        if done < total:
            print(f"{label}: {done}/{total} test problems fine-tuned, {spent:.1f}s", flush=True)
    return rows


def _ways(episode, objective: Objective) -> int | None:
    return None if objective.regression else int(episode.support_y.max()) + 1


def report(out: Path) -> str:
    """``study.md`` and the plots from ``study.csv`` and the saved config."""
    cfg = OmegaConf.load(out / CONFIG)
    missing = missing_pieces(out, cfg)
    # A study still running (or stopped): the report of the pieces done so far, said to be partial.
    rows = ([r for f in sorted((out / "rows").rglob("*.csv")) for r in analysis.read_rows(f)] if missing
            else analysis.read_rows(out / "study.csv"))
    if not rows:
        raise ValueError(f"{out} has no rows yet; run the study first")
    lower = Objective(hydra.utils.get_class(cfg.dataset._target_).task).mode == "min"
    metric = "mse" if lower else "acc"
    primary = protocol.primary(cfg) if cfg.get("primary") is not None else None
    reference = primary.pretrained if primary else next((str(i) for i in cfg.pretrained if i in cfg.inits), None)
    alpha = float(cfg.get("intervals", cfg.get("bootstrap", {})).get("alpha", 0.05))  # `bootstrap`: older studies
    study = analysis.Study(rows, reference, primary, lower, alpha)
    episodes = int(cfg.stage1.get("converged", {}).get("val_episodes", 1000))
    stage1_table, converged, examples = training.table(out, episodes, cfg)
    for init in {r["init"] for r in rows}:
        if budgets.split(init)[1]:
            study.notes[init] = " (budget arm)"
        elif cfg.inits.get(init) is not None and converged.get(init) is not True:
            # No readable stage-1 run (a study from before the criterion, a checkpoint given without its run
            # directory) is not a converged one.
            study.notes[init] = " (NOT CONVERGED)" if init in converged else " (convergence unknown)"
    seeds = sorted({r["seed"] for r in rows})
    header = [f"# Data-efficiency study: {cfg.name}", "",
              f"Command: `{_command(out, cfg)}` (settings: `{CONFIG}`).",
              f"Batch norm: {rows[0]['bn']} at adaptation and test"
              + (" (queries normalised with the support set's statistics)." if rows[0]["bn"] == "inductive"
                 else " (TRANSDUCTIVE: queries share their batch statistics)."),
              f"Stage-1 seeds: {', '.join(seeds)}; target problems per (N, K): {cfg.target.problems} "
              f"({cfg.target.finetune_problems} for full fine-tuning), the same for every init and seed (crossed).",
              f"CIs: {stats.CROSSED} at {100 * (1 - alpha):.0f}%, seeds and problems both random (with {len(seeds)} "
              f"seeds the spread between seeds enters with t({len(seeds) - 1})'s tail); the primary comparison Holm-corrected over its family, "
              "everything else exploratory; Cohen's d_z of the paired differences. Full fine-tuning's start, optimiser, "
              "step size and count, and the learners' test-time step size and count, are chosen per (init, N, K) "
              "on validation problems (the stage-1 validation classes or functions), once for all of an init's "
              "seeds, never on the test problems (`rows/N*_K*/<init>_<adaptation>_choice.json`)."]
    if missing:
        header += ["", f"**PARTIAL: {len(missing)} of {len(missing_pieces(out, cfg, every=True))} pieces are not done yet "
                   f"(first missing: {missing[0].parent.name}/{missing[0].name}); every number below is from the pieces "
                   "done so far. The study's command continues it.**"]
    unconverged = [] if primary is None else [i for i in (primary.meta, primary.pretrained)
                                              if cfg.inits.get(i) is not None and converged.get(i) is not True]
    if unconverged:
        header += ["", f"**Not the converged answer: {', '.join(unconverged)} "
                   "did not meet the stage-1 convergence criterion, or has no readable stage-1 run (the table below); "
                   "its numbers are labelled so wherever they appear.**"]
    text = analysis.markdown(study, metric, header)
    text += "\n" + "\n".join(budget_answer.markdown(study, examples))
    text += "\n" + "\n".join(stage1_table)
    text += "\n" + "\n".join(speed.table(study, metric))
    text += "\n" + "\n".join(analysis.convergence_table(rows))
    text += "\n\n" + "\n".join(choices.table(rows))
    if cfg.get("labels") is not None:  # studies before the labels table have none
        text += "\n\n" + "\n".join(labels.table(rows, [float(v) for v in cfg.labels.targets],
                                                 int(cfg.target.all_shots), lower))
    section = controls.markdown(out, cfg, alpha)
    if section:
        text += "\n\n" + "\n".join(section)
    atomic_write_text(out / "study.md", text)
    pictures = (analysis.plot(out, study, metric) + analysis.plot_convergence(out, study, metric)
                + budget_answer.plot(out, study, examples, metric))
    _tensorboard(out, pictures)
    return text


def _start_workers(n: int, argv: Sequence[str] | None, out: Path) -> list[subprocess.Popen]:
    """``n`` more processes of this study command on the same ``--out`` (claims.py shares the pieces),
    the cores split between them and this one."""
    if n <= 0:
        return []
    threads = max(1, (os.cpu_count() or 1) // (n + 1))
    torch.set_num_threads(threads)
    args = list(sys.argv[1:] if argv is None else argv)
    if "--out" not in args:
        args += ["--out", str(out)]
    keep, skip = [], False
    for a in args:  # the helpers are plain workers: no --workers of their own
        if skip:
            skip = False
        elif a == "--workers":
            skip = True
        elif not a.startswith("--workers="):
            keep.append(a)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    logs = out / "workers"
    logs.mkdir(exist_ok=True)
    procs = []
    for i in range(n):
        with open(logs / f"worker{i + 1}.log", "w") as f:
            procs.append(subprocess.Popen([sys.executable, "-m", "metaft.study", *keep], env=env, stdout=f,
                                          stderr=subprocess.STDOUT))
    print(f"{n} more worker(s) started, logs in {logs}", flush=True)
    return procs


def row_file(out: Path, ways: object, shots: object, init: str | None = None, seed: int | None = None,
             adaptation: str | None = None) -> Path:
    """The folder of one (N, K) piece under ``out/rows``, or, given the rest, the file of one (init, seed, adaptation)'s rows."""
    piece = out / "rows" / f"N{ways}_K{shots}"
    return piece if init is None else piece / f"{init}_seed{seed}_{adaptation}.csv"


def missing_pieces(out: Path, cfg: DictConfig, every: bool = False) -> list[Path]:
    """The row files (one per N, K, init, seed and adaptation) the study has not written yet; with
    ``every``, all of them."""
    pieces = [row_file(out, ways, shots, init, seed, a)
              for ways in cfg.target.ways for shots in cfg.target.shots for init in cfg.inits
              for seed in cfg.stage1.seeds for a in evaluate.ADAPTATIONS]
    return pieces if every else [p for p in pieces if not p.is_file()]


def _command(out: Path, cfg: DictConfig) -> str:
    saved = out / "command.txt"
    return saved.read_text().strip() if saved.is_file() else f"python -m metaft.study {cfg.name} --out {out}"


def _tensorboard(out: Path, pictures: list[Path]) -> None:
    import matplotlib.image as mpimg
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(out / "tensorboard")) as w:
        for p in pictures:
            w.add_image(f"study/{p.stem}", mpimg.imread(p)[..., :3], dataformats="HWC")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m metaft.study", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help="a study of conf/study/ (omniglot, omniglot_cpu, sinusoid, mini_imagenet, "
                   "image_folder: your own images, dataset.data_dir=ROOT), or 'report'")
    p.add_argument("rest", nargs="*", help="key=value overrides of the study's config; for report: the study's DIR")
    p.add_argument("--out", default=None, help="output directory (an existing one of the same study continues); default: ./outputs/study/<name>/<date_time>")
    p.add_argument("--ckpt", action="append", default=[], help="INIT=PATH[,PATH...]: stage-1 checkpoints, one per seed")
    p.add_argument("--workers", type=int, default=1, help="processes sharing the adaptations, each taking whole "
                   "(init, adaptation, N, K) pieces (the same command started again with the same --out joins too)")
    args = p.parse_intermixed_args(argv)  # key=value before or after the options
    try:
        if args.name == "report":
            if len(args.rest) != 1:
                raise ValueError("python -m metaft.study report DIR: give the study's output directory")
            print(report(Path(args.rest[0])))
            return 0
        if args.workers < 1:
            raise ValueError(f"--workers {args.workers}: give 1 or more processes")
        cfg = load_config(args.name, args.rest)
        cfg = datasets.resolve(cfg)  # settings left to give (???) refused; a dataset config composed
        protocol.check(cfg)  # the test split and the primary comparison, before anything runs
        cfg = budgets.expand(cfg)  # the stage-1 budget arms as inits of their own
        choices.check(cfg)  # the grids chosen from on validation problems
        controls.check(cfg)  # the controls with known answers
        given = given_checkpoints(cfg, args.ckpt)
        out = output_dir(cfg, args.out)
        print(f"study directory: {out}", flush=True)
        OmegaConf.save(cfg, out / CONFIG)  # before any helper worker checks this --out against it
        # The exact command, so the report can say how to continue or reproduce this study.
        command = " ".join(["python -m metaft.study", args.name, *args.rest, "--out", str(out),
                            *(f"--ckpt {c}" for c in args.ckpt)])
        atomic_write_text(out / "command.txt", command + "\n")
        helpers = _start_workers(args.workers - 1, argv, out)
        done = run(cfg, out, given)
        if helpers:
            for h in helpers:
                h.wait()
            done = run(cfg, out, given)  # every piece is done now: the table, controls and report
        if done is None:
            print(f"this process's pieces are done; other processes of the study in {out} still work on "
                  f"{len(claims.others(out / 'rows'))} pieces, and the last of them writes the report", flush=True)
            return 0
        print(report(out))
        print(f"\nwritten: {out / 'study.md'}, {out / 'study.csv'}", flush=True)
        return 0
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
