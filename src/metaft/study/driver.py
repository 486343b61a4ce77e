"""The data-efficiency study: test metric against K labelled examples, one line per initialisation.

    python -m metaft.study sinusoid|omniglot [--ckpt NAME=PATH ...] [--jobs N] [--out DIR] [-- OVERRIDES]
    python -m metaft.study report SWEEP_DIR [--metric test/mse]

The preset ``conf/experiment/finetune_study_<target>.yaml`` holds the fine-tuning protocol (the
same for every init), the mapping init-name -> checkpoint (``checkpoints``) and the study grid
(``study.inits``, ``study.shots``, ``study.seeds``). The driver (1) meta-trains every listed init
without a checkpoint (``python train.py algorithm=<init> <study.meta_train>``; ``pretrained`` is
``algorithm=pretrain``), skipping inits whose algorithm config does not exist; (2) runs the sweep
as one Hydra multirun; (3) writes ``study.md``, ``study.csv``, ``study.png`` and the plot into
TensorBoard (``<out>/tensorboard``): mean ± 95% CI over seeds per (init, K) cell.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from omegaconf import OmegaConf

from metaft.report import fmt, higher_is_better, load_runs, markdown_table, mean_ci95
from metaft.runtime.paths import project_root
from metaft.runtime.run_dirs import claim

ROOT = project_root()
CONF = ROOT / "conf"
TRAIN = ROOT / "train.py"


def algorithm_of(init: str) -> str:
    return "pretrain" if init == "pretrained" else init


def _env() -> dict[str, str]:
    """Subprocesses import this checkout's code."""
    src = str(ROOT / "src")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([src, *filter(None, [os.environ.get("PYTHONPATH")])])}


def _run(cmd: list[str], log_file: Path) -> int:
    return _run_all([cmd], [log_file])


def _run_all(cmds: Sequence[list[str]], log_files: Sequence[Path]) -> int:
    """Run the commands side by side (each logging to its file); the worst exit status."""
    procs = []
    for cmd, log_file in zip(cmds, log_files):
        print("$", " ".join(cmd), flush=True)
        with open(log_file, "w") as log:
            procs.append(subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT))
    return max(p.wait() for p in procs)


def meta_train(init: str, overrides: Sequence[str], out: Path) -> Path:
    """Meta-train ``init`` (seed 0) into ``out/meta/<init>``; return its best checkpoint."""
    run = out / "meta" / init
    run.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(TRAIN), f"algorithm={algorithm_of(init)}", *overrides, "seed=0", f"hydra.run.dir={run}"]
    rc = _run(cmd, run / "stdout.log")
    best = run / "checkpoints" / "best.ckpt"
    if rc != 0 or not best.is_file():
        raise RuntimeError(f"meta-training {init} failed (exit {rc}); see {run / 'stdout.log'}")
    return best


def study(target: str, ckpts: dict[str, str], out: Path, extra: Sequence[str] = (), inits: Sequence[str] | None = None,
          shots: Sequence[str] | None = None, seeds: Sequence[str] | None = None, meta_extra: Sequence[str] = (),
          jobs: int = 1) -> str:
    """Run the whole study for ``target``; return the report's markdown. ``extra``: overrides of
    every fine-tuning run; ``meta_extra``: of every meta-training run (after ``study.meta_train``).
    ``jobs``: fine-tuning sweeps run side by side, the inits dealt out among them (one process
    each; the sweeps land in ``sweep/part<i>``)."""
    if jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")
    preset = CONF / "experiment" / f"finetune_study_{target}.yaml"
    if not preset.is_file():
        raise FileNotFoundError(f"no study preset {preset}; choose one of "
                                f"{sorted(p.stem.removeprefix('finetune_study_') for p in preset.parent.glob('finetune_study_*.yaml'))}")
    if out.is_dir() and any(out.iterdir()):
        raise ValueError(f"--out {out} is not empty (an earlier study?); this study would overwrite its runs or mix "
                         "them with its own: choose a new directory (or drop --out for a fresh time-stamped one)")
    cfg = OmegaConf.load(preset).study
    inits = list(inits or cfg.inits)
    given = {**{k: v for k, v in (OmegaConf.load(preset).get("checkpoints") or {}).items() if v}, **ckpts}
    out.mkdir(parents=True, exist_ok=True)
    notes, run_inits = [], []
    for init in inits:
        if init == "random":
            run_inits.append(init)
        elif init in given:
            run_inits.append(init)
        elif not (CONF / "algorithm" / f"{algorithm_of(init)}.yaml").is_file():
            notes.append(f"{init}: skipped (no conf/algorithm/{algorithm_of(init)}.yaml and no --ckpt {init}=PATH)")
        else:
            t0 = time.time()
            meta_overrides = [*cfg.meta_train, *meta_extra]
            try:
                given[init] = str(meta_train(init, meta_overrides, out))
            except RuntimeError as e:  # one learner's failure should not cost the others' results
                notes.append(f"{init}: skipped, {e}")
                continue
            notes.append(f"{init}: meta-trained here in {time.time() - t0:.0f} s ({' '.join(meta_overrides)}, seed 0)")
            run_inits.append(init)
    if not run_inits:
        raise RuntimeError("no initialisation left to fine-tune: " + "; ".join(notes))
    sweep = out / "sweep"
    groups = [g for g in (run_inits[i::jobs] for i in range(jobs)) if g]
    cmds = [
        [sys.executable, str(TRAIN), "--config-name", "finetune", "-m", f"experiment=finetune_study_{target}",
         f"init={','.join(group)}", f"target.shots={','.join(map(str, shots or cfg.shots))}",
         f"seed={','.join(map(str, seeds or cfg.seeds))}",
         f"hydra.sweep.dir={sweep if len(groups) == 1 else sweep / f'part{i}'}",
         *(f"++checkpoints.{k}={v}" for k, v in given.items() if k in group), *extra]
        for i, group in enumerate(groups)
    ]
    t0 = time.time()
    logs = [out / "sweep.log"] if len(cmds) == 1 else [out / f"sweep_part{i}.log" for i in range(len(cmds))]
    rc = _run_all(cmds, logs)
    notes.append(f"sweep: {time.time() - t0:.0f} s in {len(cmds)} process(es), exit {rc} "
                 f"(log: {', '.join(str(p) for p in logs)})")
    (out / "study_notes.txt").write_text("\n".join(notes) + "\n")
    text = report(sweep, out, metric=str(cfg.metric), notes=notes, order=run_inits)
    if rc != 0:  # the report covers the jobs that finished; the study itself did not
        raise RuntimeError(f"the fine-tuning sweep exited with status {rc}: some jobs failed (their errors: "
                           f"failed_jobs.txt under {sweep}, and {', '.join(str(p) for p in logs)}); the report of "
                           f"the jobs that finished is in {out / 'study.md'}")
    return text


# ------------------------------------------------------------------------------------- report
def _shots_label(run_dir: Path, data: dict) -> str:
    for o in data.get("overrides", []):
        if o.startswith("target.shots="):
            return o.split("=", 1)[1]
    return str(data.get("shots"))


def collect(sweep: Path, metric: str) -> dict[tuple[str, str], dict]:
    """(init, K) -> {"values": per-seed metric values, "failed": count, "k": numeric K}."""
    cells: dict[tuple[str, str], dict] = {}
    for run in load_runs(sweep):
        d = sweep / run.dir
        data = json.loads((d / "results.json").read_text())
        init = next((o.split("=", 1)[1] for o in run.overrides if o.startswith("init=")), data.get("init", "?"))
        label = _shots_label(d, data)
        cell = cells.setdefault((init, label), {"values": [], "failed": 0, "k": math.nan})
        if run.status == "ok" and metric in run.metrics:
            cell["values"].append(run.metrics[metric])
            cell["k"] = float(data.get("shots") or math.nan)
        else:
            cell["failed"] += 1
    return cells


def _k_order(label: str) -> tuple[int, float]:
    return (1, 0.0) if label == "all" else (0, float(label))


def report(sweep: str | Path, out: str | Path | None = None, metric: str = "test/mse", notes: Sequence[str] = (),
           order: Sequence[str] | None = None) -> str:
    """Table (mean ± 95% CI over seeds, Student's t) of ``metric`` per init x K, as markdown and
    CSV, and a plot of it against K (PNG and TensorBoard). Returns the markdown."""
    sweep = Path(sweep)
    out = Path(out) if out is not None else sweep
    out.mkdir(parents=True, exist_ok=True)
    cells = collect(sweep, metric)
    if not cells:
        raise ValueError(f"no runs with {metric} under {sweep}")
    found = sorted({i for i, _ in cells})
    inits = [i for i in (order or []) if i in found] + [i for i in found if i not in (order or [])]
    ks = sorted({k for _, k in cells}, key=_k_order)
    stats = {key: mean_ci95(c["values"]) for key, c in cells.items()}
    rows = []
    for i in inits:
        row = [i]
        for k in ks:
            c = cells.get((i, k))
            cell = "-" if c is None else fmt(*stats[(i, k)]) + f" (n={len(c['values'])}" + (f", {c['failed']} failed)" if c["failed"] else ")")
            row.append(cell)
        rows.append(row)
    better = "higher" if higher_is_better(metric) else "lower"
    text = "\n\n".join([
        f"# Data-efficiency study: {sweep}",
        f"{metric} ({better} is better) against K labelled examples (per class), mean ± 95% CI over seeds "
        "(Student's t, n-1 degrees of freedom); n = seeds that finished.",
        markdown_table(["init", *(f"K={k}" for k in ks)], rows),
        *(["## Notes", "\n".join(f"- {n}" for n in notes)] if notes else []),
    ]) + "\n"
    (out / "study.md").write_text(text)
    with open(out / "study.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["init", "K", "k_numeric", "n", "failed", f"{metric}_mean", f"{metric}_ci95", "values"])
        for i in inits:
            for k in ks:
                if (i, k) in cells:
                    c = cells[(i, k)]
                    w.writerow([i, k, c["k"], len(c["values"]), c["failed"], *stats[(i, k)], " ".join(map(str, c["values"]))])
    plot(out, cells, stats, inits, ks, metric)
    return text


def plot(out: Path, cells: dict, stats: dict, inits: Sequence[str], ks: Sequence[str], metric: str) -> None:
    """``study.png`` and the same figure (plus one scalar per init and K) in ``out/tensorboard``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torch.utils.tensorboard import SummaryWriter

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    xs = list(range(len(ks)))  # K is ordinal here: `all` differs by target
    for n, i in enumerate(inits):
        pts = [(x, *stats[(i, k)]) for x, k in zip(xs, ks) if (i, k) in stats and not math.isnan(stats[(i, k)][0])]
        if pts:
            x, m, ci = zip(*pts)
            ax.errorbar(x, m, yerr=[0 if math.isnan(c) else c for c in ci], marker="o", capsize=3, label=i,
                        color=f"C{n % 10}")
    ax.set_xticks(xs, [f"K={k}" for k in ks])
    ax.set_ylabel(f"{metric} (mean ± 95% CI over seeds)")
    if not higher_is_better(metric):
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "study.png", dpi=120)
    writer = SummaryWriter(str(out / "tensorboard"))
    writer.add_figure(f"study/{metric}", fig)
    for i in inits:
        for k in ks:
            if (i, k) in stats and not math.isnan(stats[(i, k)][0]) and not math.isnan(cells[(i, k)]["k"]):
                writer.add_scalar(f"study/{metric}/{i}", stats[(i, k)][0], global_step=int(cells[(i, k)]["k"]))
    writer.close()
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(prog="python -m metaft.study", description=__doc__.split("\n\n")[0])
    p.add_argument("target", help="sinusoid | omniglot (conf/experiment/finetune_study_<target>.yaml), or `report`")
    p.add_argument("path", nargs="?", help="report: the sweep directory")
    p.add_argument("--ckpt", action="append", default=[], metavar="NAME=PATH", help="a given checkpoint per init")
    p.add_argument("--inits", help="comma-separated subset of study.inits")
    p.add_argument("--shots", help="comma-separated K values (default study.shots)")
    p.add_argument("--seeds", help="comma-separated seeds (default study.seeds)")
    p.add_argument("--meta-override", action="append", default=[], metavar="KEY=VALUE",
                   help="an extra override of every meta-training run (e.g. trainer.max_steps=200)")
    p.add_argument("--jobs", type=int, default=1, help="fine-tuning sweeps side by side, the inits dealt out among them")
    p.add_argument("--metric", default=None, help="report: the metric (default test/acc or test/mse as found)")
    p.add_argument("--out", help="output directory (default outputs/study/<target>/<date_time>)")
    args = p.parse_args(argv)
    try:
        if args.target == "report":
            if not args.path:
                p.error("report needs the sweep directory")
            metric = args.metric or ("test/acc" if any("test/acc" in r.metrics for r in load_runs(Path(args.path))) else "test/mse")
            print(report(args.path, args.out, metric), end="")
            return 0
        bad = [c for c in args.ckpt if "=" not in c]
        if bad:
            p.error(f"--ckpt takes NAME=PATH (e.g. --ckpt maml=outputs/train/runs/<run>/checkpoints/best.ckpt), got {bad[0]!r}")
        ckpts = dict(c.split("=", 1) for c in args.ckpt)
        # The default directory is created here, with a suffix if a study started in the same second has it.
        out = Path(args.out) if args.out else claim(ROOT / "outputs" / "study" / args.target / time.strftime("%Y-%m-%d_%H-%M-%S"))
        split = (lambda s: s.split(",") if s else None)
        print(study(args.target, ckpts, out, extra, split(args.inits), split(args.shots), split(args.seeds),
                    args.meta_override, args.jobs), end="")
        print(f"\nwritten to {out}")
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
