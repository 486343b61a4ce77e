"""Every algorithm config composes, trains a few steps through the real entry point, writes a
checkpoint and results.json; its test metric equals an adaptation written out here by hand (plain
autograd SGD, no metaft inner loop), and the eval config reproduces it exactly."""
from __future__ import annotations

import json

import hydra
import numpy as np
import pytest
import torch
from torch.func import functional_call

from metaft.stages import main

FAST = ["trainer.max_steps=6", "trainer.val_check_interval=3", "checkpoint.every_n_train_steps=2",
        "dataset.val_episodes=20", "dataset.test_episodes=30", "dataset.meta_batch_size=4", "seed=0"]


def hand_test_mse(cfg, ckpt: str) -> list[float]:
    """Test MSE of a checkpoint by a loop written from the papers: per test task, the configured
    number of plain SGD steps (Meta-SGD: its learned per-entry step sizes; ANIL: the head only) on
    the support MSE, then the query MSE; one value per task, in episode order."""
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    net = hydra.utils.instantiate(cfg.model)
    net.load_state_dict({k[len("net."):]: v for k, v in state.items() if k.startswith("net.")})
    a = cfg.algorithm
    steps = a.inner_steps if a.get("eval_inner_steps") is None else a.eval_inner_steps
    lr = a.inner_lr if a.get("eval_inner_lr") is None else a.eval_inner_lr
    lrs = {k[len("inner_lrs."):].replace("__", "."): v for k, v in state.items() if k.startswith("inner_lrs.")}
    head_only = a._target_.endswith(".ANIL") or a.get("adapt") == "head" or a.get("adapt_head_only")
    adapted = [k for k, _ in net.named_parameters() if k.startswith("head.") or not head_only]
    errors = []
    for batch in hydra.utils.instantiate(cfg.dataset).fixed_episodes("test"):
        for t in range(batch.num_tasks):
            params = {k: p.detach().clone().requires_grad_(k in adapted) for k, p in net.named_parameters()}
            for _ in range(steps):
                loss = (functional_call(net, params, batch.support_x[t]) - batch.support_y[t]).pow(2).mean()
                grads = torch.autograd.grad(loss, [params[k] for k in adapted])
                params.update({k: params[k] - lrs.get(k, lr) * g for k, g in zip(adapted, grads)})
            with torch.no_grad():
                errors.append((functional_call(net, params, batch.query_x[t]) - batch.query_y[t]).pow(2).mean().item())
    return errors


@pytest.mark.parametrize("algorithm", ["maml", "fomaml", "metasgd", "reptile", "anil"])
def test_train_then_eval_reproduces(run_config, algorithm):
    cfg = run_config("train", [f"algorithm={algorithm}", *FAST], "train")
    main(cfg)
    out = cfg.hydra.runtime.output_dir
    results = json.loads(open(f"{out}/results.json").read())
    for key in ("test/mse", "test/mse_ci95", "test/episodes", "test/mse_step0", "test/mse_step1"):
        assert key in results, key
    assert results["test/episodes"] == 30
    last_step = max(int(k.rsplit("step", 1)[1]) for k in results if k.startswith("test/mse_step"))
    assert last_step == cfg.algorithm.inner_steps
    assert results["test/mse"] == results[f"test/mse_step{last_step}"]
    # Adapting on the support set helps the query set: after a few meta-steps every learner's inner
    # loop already lowers the test error (0 or a broken inner loop would not).
    assert results["test/mse"] < results["test/mse_step0"]
    ckpt = f"{out}/checkpoints/best.ckpt"
    assert results["ckpt"].endswith("best.ckpt")
    hand = hand_test_mse(cfg, ckpt)
    assert results["test/mse"] == pytest.approx(sum(hand) / len(hand), rel=1e-4)
    # The per-episode file holds every episode's own score, by index (what metaft.compare pairs).
    rows = np.loadtxt(f"{out}/test_episodes.csv", delimiter=",", skiprows=1)
    assert open(f"{out}/test_episodes.csv").readline().strip() == "episode,mse,loss"
    assert (rows[:, 0] == np.arange(30)).all()
    assert rows[:, 1] == pytest.approx(hand, rel=1e-4, abs=1e-7)

    ev = run_config("eval", [f"ckpt_path={ckpt}"], "eval")
    main(ev)
    again = json.loads(open(f"{ev.hydra.runtime.output_dir}/results.json").read())
    assert again["test/mse"] == results["test/mse"]
    assert again["test/mse_ci95"] == results["test/mse_ci95"]
    assert open(f"{ev.hydra.runtime.output_dir}/test_episodes.csv").read() == open(f"{out}/test_episodes.csv").read()


def test_eval_overrides_apply_on_top_of_the_stored_config(run_config):
    cfg = run_config("train", FAST, "train")
    main(cfg)
    ckpt = f"{cfg.hydra.runtime.output_dir}/checkpoints/last.ckpt"
    ev = run_config("eval", [f"ckpt_path={ckpt}", "algorithm.eval_inner_steps=4"], "eval")
    main(ev)
    res = json.loads(open(f"{ev.hydra.runtime.output_dir}/results.json").read())
    assert [k for k in res if k.startswith("test/mse_step")] == [f"test/mse_step{i}" for i in range(5)]
    # More steps at test keep improving a freshly trained model on average; step 0 is unadapted.
    assert res["test/mse_step4"] < res["test/mse_step0"]


def test_eval_on_validation_scores_the_training_runs_validation_episodes(run_config):
    # Validated once, at its last step, so the run's last validation scored best.ckpt's weights:
    # eval_split=val must give that number again (same episodes, same weights), and no test number.
    once = [o for o in FAST if not o.startswith("trainer.val_check_interval")] + ["trainer.val_check_interval=6"]
    cfg = run_config("train", once, "train")
    main(cfg)
    out = cfg.hydra.runtime.output_dir
    trained = json.loads(open(f"{out}/results.json").read())
    ev = run_config("eval", [f"ckpt_path={out}", "eval_split=val"], "eval")
    main(ev)
    res = json.loads(open(f"{ev.hydra.runtime.output_dir}/results.json").read())
    assert res["val/mse"] == pytest.approx(trained["val/mse"], rel=1e-6)
    assert not any(k.startswith("test/") for k in res)
    dm = hydra.utils.instantiate(cfg.dataset)
    assert res["val_episodes_fingerprint"] == dm.fingerprint("val") != dm.fingerprint("test")
    bad = run_config("eval", [f"ckpt_path={out}", "eval_split=train"], "eval")
    with pytest.raises(ValueError, match="eval_split must be test or val"):
        main(bad)


def test_eval_seed_moves_the_test_episodes_as_dataset_seed_does(run_config, caplog):
    import logging

    cfg = run_config("train", FAST, "train")
    main(cfg)
    out = cfg.hydra.runtime.output_dir
    trained = json.loads(open(f"{out}/results.json").read())

    def scored(overrides: list[str], name: str) -> dict:
        ev = run_config("eval", [f"ckpt_path={out}", *overrides], name)
        main(ev)
        return json.loads(open(f"{ev.hydra.runtime.output_dir}/results.json").read())

    same = scored([], "same")
    assert same["test_episodes_fingerprint"] == trained["test_episodes_fingerprint"]
    with caplog.at_level(logging.INFO):
        moved = scored(["seed=1"], "seed")
    assert "seed=1: the evaluation episodes are drawn with dataset.seed=1" in caplog.text
    explicit = scored(["dataset.seed=1"], "dataset_seed")
    assert moved["test_episodes_fingerprint"] == explicit["test_episodes_fingerprint"] != same["test_episodes_fingerprint"]
    assert moved["test/mse"] == pytest.approx(explicit["test/mse"], rel=1e-6)
    # both given: dataset.seed decides the episodes
    both = scored(["seed=1", "dataset.seed=0"], "both")
    assert both["test_episodes_fingerprint"] == same["test_episodes_fingerprint"]
