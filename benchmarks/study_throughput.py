"""Target problems adapted per second: ``metaft.study.problems`` against one Lightning
fine-tuning run per problem (``train.py --config-name finetune``), on the same Omniglot problems,
checking that both give the same test accuracy.

    PYTHONPATH=src .venv/bin/python benchmarks/study_throughput.py [--ckpt PATH] [--problems 4]
        [--ways 5] [--shots 1] [--steps 20] [--lr 0.1] [--filters 64] [--threads 1] [--json PATH]

Both sides do the same computation: plain SGD on the full training set (the Lightning batch is
set larger than it, so every step sees all of it in one batch), the prototype head, ``--steps``
steps, no early stopping (one validation, at the end, so the tested checkpoint is the last), and
the test set in one batch with transductive batch norm (``FineTuner``'s evaluation of a
``model.bn=transductive`` Conv4, hence ``bn="transductive"`` on the batched side). Problem ``i``
is the target of ``seed=i``. Without ``--ckpt``, a randomly initialised Conv4 saved as a stage-1
checkpoint stands in for a meta-learned one (throughput does not depend on the weights).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from metaft.data.episode import Episode
from metaft.study.problems import finetune_problems
from metaft.models import Conv4


def compose(overrides: list[str], out_dir: Path):
    """The finetune config as ``train.py --config-name finetune OVERRIDES`` composes it, with
    its run directory at ``out_dir``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose(config_name="finetune", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(out_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg


def random_checkpoint(path: Path, filters: int) -> Path:
    """A stage-1-format checkpoint of a random Conv4 (``net.*`` weights and its config)."""
    torch.manual_seed(0)
    model = {"_target_": "metaft.models.Conv4", "in_channels": 1, "image_size": 28, "filters": filters,
             "out_features": 5, "pool": "max", "bn": "transductive"}
    net = Conv4(filters=filters)
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                "metaft_config": {"model": model, "algorithm": {"_target_": "metaft.algorithms.MAML"}, "dataset": {}}}, path)
    return path


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", help="a meta-checkpoint (default: a random Conv4)")
    ap.add_argument("--problems", type=int, default=4)
    ap.add_argument("--ways", type=int, default=5)
    ap.add_argument("--shots", type=int, default=1)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--filters", type=int, default=64, help="Conv4 width of the random checkpoint")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="write the result row here")
    args = ap.parse_args(argv)
    if args.problems < 1 or args.steps < 1:
        ap.error("--problems and --steps must be >= 1")
    torch.set_num_threads(args.threads)
    from metaft.stages.finetune import (  # after sys.path: the checkout's code
        build,
        finetune,
    )

    tmp = Path(tempfile.mkdtemp(prefix="study_throughput_"))
    ckpt = args.ckpt or str(random_checkpoint(tmp / "random.ckpt", args.filters))
    common = [f"meta_ckpt={ckpt}", "init=meta", "target=omniglot", f"target.ways={args.ways}",
              f"target.shots={args.shots}", "target.batch_size=100000", "target.eval_batch_size=100000",
              "head_init=prototypes", "finetuner.optimizer._target_=torch.optim.SGD", f"finetuner.optimizer.lr={args.lr}",
              f"trainer.max_steps={args.steps}", f"trainer.val_check_interval={args.steps}",
              f"checkpoint.every_n_train_steps={args.steps}", "early_stopping.patience=0", "progress=log",
              "hardware=cpu"]

    # One Lightning run per problem, timed end to end (what a study sweep pays per problem).
    lightning_acc, lightning_loss, t0 = [], [], time.perf_counter()
    for i in range(args.problems):
        results = finetune(compose([*common, f"seed={i}"], tmp / f"run{i}"))
        lightning_acc.append(float(results["test/acc"]))
        lightning_loss.append(float(results["test/loss"]))
    lightning_s = time.perf_counter() - t0

    # The same problems batched: the start net (body from the checkpoint) and each target's
    # train / test split as one Episode; build() also seeds nothing the batched side needs.
    t0 = time.perf_counter()
    net, sx, sy, qx, qy = None, [], [], [], []
    for i in range(args.problems):
        dm, learner, _ = build(compose([*common, f"seed={i}"], tmp / f"build{i}"))
        (x_train, y_train), (x_test, y_test) = dm.splits["train"], dm.splits["test"]
        net = net or learner.net  # the body is the checkpoint's for every problem; heads come per problem
        sx.append(x_train), sy.append(y_train), qx.append(x_test), qy.append(y_test)
    episode = Episode(torch.stack(sx), torch.stack(sy), torch.stack(qx), torch.stack(qy))
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    curves = finetune_problems(net, episode, steps=args.steps, lr=args.lr, bn="transductive")
    batched_s = time.perf_counter() - t0
    batched_acc, batched_loss = curves.acc[:, -1].tolist(), curves.loss[:, -1].tolist()

    row = {"problems": args.problems, "ways": args.ways, "shots": args.shots, "steps": args.steps,
           "threads": args.threads, "lightning_problems_per_s": args.problems / lightning_s,
           "batched_problems_per_s": args.problems / batched_s, "batched_load_s": load_s,
           "speedup": lightning_s / batched_s, "lightning_acc": lightning_acc, "batched_acc": batched_acc,
           "lightning_test_loss": lightning_loss, "batched_test_loss": batched_loss}
    print(json.dumps(row, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(row, indent=1))
    # The same float32 computation up to summation order: equal accuracy, and the test loss up to
    # rounding, which batch norm over a few support images amplifies (its variance can be tiny)
    # and SGD carries on: 1e-3 relative. (float64 is no sharper check: the Lightning route builds
    # its prototype head in float32 before the trainer converts the model.)
    tol = 1e-3
    mismatch = [i for i in range(args.problems) if abs(lightning_acc[i] - batched_acc[i]) > 1e-3
                or abs(lightning_loss[i] - batched_loss[i]) > tol * max(1.0, abs(lightning_loss[i]))]
    if mismatch:
        raise SystemExit(f"the two routes differ on problems {mismatch}: see lightning_* and batched_* above")
    return row


if __name__ == "__main__":
    main()
