"""Initialising the fine-tuning model: body from the checkpoint, head rules, step sizes, errors."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from metaft import checkpoint
from metaft.core.errors import NonFiniteLossError
from metaft.finetune.module import FineTuner, init_head, metasgd_step_sizes
from metaft.stages.finetune import build
from metaft.models import MLP, Conv4
from tests.finetune.conftest import FAST, MLP_CFG, save_ckpt


def test_meta_init_loads_the_body_and_keeps_a_fitting_head(run_config, mlp_ckpt):
    ckpt = torch.load(mlp_ckpt, weights_only=True)["state_dict"]
    _, learner, info = build(run_config("finetune", [f"meta_ckpt={mlp_ckpt}", *FAST]))
    for k, v in learner.net.state_dict().items():
        assert torch.equal(v, ckpt[f"net.{k}"]), k  # step 0: exactly the checkpoint's weights
    assert info["init_kind"] == "meta" and info["head_init"] == "keep"


def test_random_init_takes_only_the_architecture(run_config, mlp_ckpt):
    ckpt = torch.load(mlp_ckpt, weights_only=True)["state_dict"]
    _, learner, info = build(run_config("finetune", ["init=random", f"meta_ckpt={mlp_ckpt}", *FAST]))
    assert info["init_kind"] == "random" and info["head_init"] == "random"
    body = learner.net.body.state_dict()
    assert all(body[k].shape == ckpt[f"net.body.{k}"].shape and not torch.equal(body[k], ckpt[f"net.body.{k}"])
               for k in body)


def test_study_mapping_and_init_kind_checks(run_config, mlp_ckpt, tmp_path):
    _, learner, info = build(run_config("finetune", ["init=maml", f"+checkpoints.maml={mlp_ckpt}", *FAST]))
    assert info["meta_ckpt"] == str(mlp_ckpt) and info["init_kind"] == "meta"
    with pytest.raises(ValueError, match=r"pre-training algorithm \(.*pretrain"):
        build(run_config("finetune", ["init=pretrained", f"meta_ckpt={mlp_ckpt}"], "b"))
    pre = save_ckpt(tmp_path / "pre.ckpt", MLP(), MLP_CFG, algorithm="metaft.algorithms.Pretrain")
    with pytest.raises(ValueError, match="init=pretrained"):
        build(run_config("finetune", ["init=meta", f"meta_ckpt={pre}"], "c"))
    # A study name takes its checkpoint's kind: Baseline++ (a Pretrain) is a pre-training init.
    _, _, info = build(run_config("finetune", ["init=baselinepp", f"+checkpoints.baselinepp={pre}", *FAST], "bpp"))
    assert info["init_kind"] == "pretrained"
    with pytest.raises(ValueError, match="needs a checkpoint"):
        build(run_config("finetune", ["init=meta"], "d"))
    with pytest.raises(ValueError, match="needs a model"):
        build(run_config("finetune", ["init=random"], "e"))
    from metaft.stages.finetune import finetune

    with pytest.raises(ValueError, match=r"early_stopping.patience must be a number of validations >= 0 \(0 disables"):
        finetune(run_config("finetune", [f"meta_ckpt={mlp_ckpt}", "early_stopping.patience=-1", *FAST], "f"))


def test_another_architecture_names_the_shapes_and_the_model_to_use(run_config, mlp_ckpt):
    cfg = run_config("finetune", [f"meta_ckpt={mlp_ckpt}", "model=mlp", "model.hidden=[20,20]"])
    with pytest.raises(ValueError) as e:
        build(cfg)
    msg = str(e.value)
    assert "another architecture" in msg
    assert "body.0.weight: model (20, 1) vs checkpoint (40, 1)" in msg
    assert "body.2.weight: model (20, 20) vs checkpoint (40, 40)" in msg
    assert "'hidden': [40, 40]" in msg and "leave `model` unset" in msg


def test_conv_checkpoint_into_an_mlp_is_refused(run_config, conv_ckpt):
    with pytest.raises(ValueError, match=r"body\.0\.0\.weight: model missing vs checkpoint \(4, 1, 3, 3\)"):
        build(run_config("finetune", [f"meta_ckpt={conv_ckpt}", "model=mlp"]))


def _ckpt_state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"net.{k}": v.clone() for k, v in net.state_dict().items()}


def test_head_rules_by_value():
    torch.manual_seed(0)
    meta = Conv4(filters=4, out_features=5)
    state = _ckpt_state(meta)
    x = torch.rand(6, 1, 28, 28, dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 2, 2, 2])

    same = Conv4(filters=4, out_features=5)
    assert init_head(same, "auto", state, "classification") == "keep"
    assert torch.equal(same.head.weight, state["net.head.weight"]) and torch.equal(same.head.bias, state["net.head.bias"])

    other = Conv4(filters=4, out_features=3)
    assert init_head(other, "auto", state, "classification") == "zero"
    assert not other.head.weight.any() and not other.head.bias.any()
    with pytest.raises(ValueError, match=r"head\.weight: model \(3, 4\) vs checkpoint \(5, 4\)"):
        init_head(other, "keep", state, "classification")

    net = Conv4(filters=4, out_features=3).double()
    net.body.load_state_dict({k[len("net.body."):]: v.double() for k, v in state.items() if k.startswith("net.body.")})
    assert init_head(net, "prototypes", state, "classification", (x, y)) == "prototypes"
    with torch.no_grad():
        f = net.body(x)  # transductive BN: the statistics of this whole training batch, as in init_head
    for c in range(3):
        mu = sum(f[i] for i in range(6) if y[i] == c) / int((y == c).sum())
        torch.testing.assert_close(net.head.weight[c], 2 * mu)
        torch.testing.assert_close(net.head.bias[c], -(mu * mu).sum())
        # The linear head is the nearest-prototype rule: logit_c = |f|^2 - |f - mu_c|^2.
        with torch.no_grad():
            torch.testing.assert_close(net.head(f)[:, c], (f * f).sum(1) - ((f - mu) ** 2).sum(1))
    with pytest.raises(ValueError, match="classification targets only"):
        init_head(MLP(), "prototypes", None, "regression")
    with pytest.raises(ValueError, match="head_init must be one of"):
        init_head(MLP(), "ones", None, "regression")


def test_metasgd_step_sizes_are_the_learning_rates():
    torch.manual_seed(1)
    net = MLP()
    alphas = {f"inner_lrs.{k.replace('.', '__')}": torch.rand_like(p) for k, p in net.named_parameters()}
    alphas["inner_lrs.body__0__bias"][:5] = -0.3  # learned gradient ascent: clamped to 0, those entries stay
    state = {**_ckpt_state(net), **alphas}
    scales = metasgd_step_sizes(net, state, "ckpt")
    assert set(scales) == {f"net.{k}" for k, _ in net.named_parameters()}
    learner = FineTuner(net, "regression", optimizer=lambda params: torch.optim.SGD(params, lr=1.0), lr_scales=scales)
    opt = learner.configure_optimizers()
    x, y = torch.rand(4, 1), torch.rand(4, 1)
    before = {k: p.detach().clone() for k, p in net.named_parameters()}
    grads = torch.autograd.grad(((net(x) - y) ** 2).mean(), list(net.parameters()))
    learner.training_step((x, y, 4), 0).backward()
    learner.on_after_backward()
    opt.step()
    for (k, p), g in zip(net.named_parameters(), grads):  # Meta-SGD's update theta - alpha * grad
        torch.testing.assert_close(p.detach(), before[k] - alphas[f"inner_lrs.{k.replace('.', '__')}"].clamp_min(0) * g)
    assert torch.equal(net.body[0].bias[:5], before["body.0.bias"][:5])
    with pytest.raises(ValueError, match="not a Meta-SGD checkpoint"):
        metasgd_step_sizes(net, _ckpt_state(net), "ckpt")
    # A head of another shape takes the mean of its old step sizes.
    small = MLP(out_features=2)
    s = metasgd_step_sizes(small, state, "ckpt")
    assert torch.equal(s["net.head.weight"], torch.full((2, 40), float(alphas["inner_lrs.head__weight"].mean())))


def test_a_model_that_cannot_read_the_target_says_so(run_config, conv_ckpt):
    with pytest.raises(ValueError, match=r"cannot read the target's inputs \(shape \[1\], target=SinusoidTarget\)"):
        build(run_config("finetune", [f"meta_ckpt={conv_ckpt}", "target=sinusoid"]))


def test_diverging_fine_tuning_raises_a_clear_error():
    net = MLP()
    learner = FineTuner(net, "regression", optimizer=lambda params: torch.optim.SGD(params, lr=1.0),
                        lr_scales={"net.head.bias": torch.ones(1)})
    x = torch.rand(4, 1)
    y = torch.full((4, 1), float("inf"))
    learner.training_step((x, y, 4), 0).backward()
    with pytest.raises(NonFiniteLossError, match="metasgd_lrs=true"):
        learner.on_after_backward()


def test_resuming_a_fine_tuning_run_continues_it_exactly(run_config, mlp_ckpt):
    from metaft.stages import main

    common = [f"meta_ckpt={mlp_ckpt}", "trainer.val_check_interval=3", "early_stopping.patience=0", "test=false",
              "progress=log", "finetuner.optimizer.lr=0.01", "checkpoint.every_n_train_steps=3"]
    full = run_config("finetune", [*common, "trainer.max_steps=6"], "full")
    main(full)
    part = run_config("finetune", [*common, "trainer.max_steps=3"], "part")
    main(part)
    part_dir = part.hydra.runtime.output_dir
    main(run_config("finetune", [*common, "trainer.max_steps=6", f"ckpt_path={part_dir}"], "resumed"))
    a = torch.load(f"{full.hydra.runtime.output_dir}/checkpoints/last.ckpt", weights_only=True)
    b = torch.load(f"{part_dir}/checkpoints/last.ckpt", weights_only=True)  # the resumed run continues in its dir
    assert a["global_step"] == b["global_step"] == 6
    for k in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k], rtol=0, atol=1e-6)


@pytest.mark.parametrize("algorithm, extra, expected", [
    ("metaft.algorithms.ProtoNet", {}, "prototypes"), ("metaft.algorithms.MetaOptNet", {}, "prototypes"),
    ("metaft.algorithms.Pretrain", {}, "prototypes"), ("metaft.algorithms.MAML", {"zero_head": True}, "zero"),
    ("metaft.algorithms.ANIL", {"zero_head": True}, "zero"), ("metaft.algorithms.MAML", {"zero_head": False}, "keep")])
def test_auto_never_keeps_a_head_that_was_not_trained(run_config, tmp_path, algorithm, extra, expected):
    """The head of a feature-head or zero-head learner is its random initialisation even when it
    fits the target: ``auto`` replaces it, and results say whether it was trained."""
    from tests.finetune.conftest import CONV_CFG

    torch.manual_seed(5)
    net = Conv4(filters=4, out_features=3)
    ckpt = save_ckpt(tmp_path / "c.ckpt", net, {**CONV_CFG, "out_features": 3}, algorithm=algorithm)
    stored = torch.load(ckpt, weights_only=True)
    stored[checkpoint.CONFIG_KEY]["algorithm"].update(extra)
    torch.save(stored, ckpt)
    init = "pretrained" if "Pretrain" in algorithm else "meta"
    folder = tmp_path / "images"
    for c in range(3):  # a 3-way target: the checkpoint's head fits it
        (folder / f"c{c}").mkdir(parents=True)
        for i in range(8):
            from PIL import Image

            Image.new("L", (28, 28), 20 + 70 * c + 3 * i).save(folder / f"c{c}" / f"{i}.png")
    dm, learner, info = build(run_config("finetune", [f"init={init}", f"meta_ckpt={ckpt}", "target=folder",
                                                      f"target.root={folder}", "target.shots=3", "target.val_per_class=2",
                                                      "target.test_per_class=3", *FAST]))
    assert info["head_init"] == expected and info["head_trained"] == (expected == "keep")
    head = learner.net.head
    if expected == "keep":
        assert torch.equal(head.weight, net.head.weight)
    elif expected == "zero":
        assert not head.weight.any() and not head.bias.any()
    else:  # W_c = 2 mu_c from the training images' features (one batch: batch norm sees them all)
        x, y = dm.splits["train"]
        with torch.no_grad():
            feats = learner.net.body(x).flatten(1)
        mu = torch.stack([feats[y == c].mean(0) for c in range(3)])
        torch.testing.assert_close(head.weight, 2 * mu)


def test_a_checkpoint_can_say_its_head_was_trained():
    from metaft.finetune.module import untrained_head_rule

    cfg = {"algorithm": {"_target_": "metaft.algorithms.ProtoNet"}}
    assert untrained_head_rule({}, cfg, "classification") == "prototypes"
    assert untrained_head_rule({}, cfg, "regression") == "zero"
    assert untrained_head_rule({checkpoint.HEAD_TRAINED_KEY: True}, cfg, "classification") is None
    assert untrained_head_rule({}, {"algorithm": {"_target_": "metaft.algorithms.Reptile"}}, "regression") is None


def test_a_preset_model_does_not_override_the_checkpoints_architecture(run_config, tmp_path, image_folder):
    """A study preset's plain Conv4 (``feature_scale: null``) with a checkpoint trained with
    ``model.feature_scale=40``: the checkpoint's architecture is built and loaded whole; init=random
    still takes the preset's model; an explicit model.* override still applies on top."""
    from omegaconf import OmegaConf, open_dict

    from tests.finetune.conftest import CONV_CFG

    torch.manual_seed(7)
    scaled = {**CONV_CFG, "feature_scale": 40.0}
    net = Conv4(filters=4, out_features=5, feature_scale=40.0)
    ckpt = save_ckpt(tmp_path / "scaled.ckpt", net, scaled)
    common = [f"meta_ckpt={ckpt}", "target=folder", f"target.root={image_folder}", "target.shots=3",
              "target.val_per_class=2", "target.test_per_class=3", *FAST]

    def with_preset_model(cfg):
        with open_dict(cfg):  # what `override /model: conv4` in a preset's defaults gives
            cfg.model = OmegaConf.create({**CONV_CFG, "feature_scale": None})
        return cfg

    _, learner, _ = build(with_preset_model(run_config("finetune", common, "meta")))
    body = learner.net.body.state_dict()
    assert all(torch.equal(v, net.body.state_dict()[k]) for k, v in body.items()) and "5.scale" in body
    _, learner, _ = build(with_preset_model(run_config("finetune", ["init=random", *common], "random")))
    assert "5.scale" not in learner.net.body.state_dict()
    with pytest.raises(ValueError, match="another architecture"):
        build(run_config("finetune", [*common, "model=conv4", "model.filters=4", "model.feature_scale=null"], "explicit"))


def test_early_stopping_is_logged_and_results_name_the_tested_step(run_config, mlp_ckpt, caplog):
    import json
    import logging

    from metaft.stages import main

    caplog.set_level(logging.INFO, logger="metaft.stages.finetune")
    # A step size too small to change anything: validation never improves after the first one.
    cfg = run_config("finetune", [f"meta_ckpt={mlp_ckpt}", "trainer.max_steps=30", "trainer.val_check_interval=3",
                                  "early_stopping.patience=2", "finetuner.optimizer.lr=1e-30", "test=false",
                                  "progress=log"], "early")
    main(cfg)
    results = json.loads((Path(cfg.hydra.runtime.output_dir) / "results.json").read_text())
    assert results["early_stopped"] is True and results["steps"] == 9 and results["best_step"] == 3
    assert "early stopping at step 9 of 30: val/mse did not improve for 2 validations" in caplog.text


def test_resuming_a_finished_run_with_no_steps_left_is_refused_before_anything_is_rewritten(run_config, mlp_ckpt):
    from metaft.stages import main

    common = [f"meta_ckpt={mlp_ckpt}", "early_stopping.patience=0", "test=false", *FAST]
    first = run_config("finetune", common, "first")
    main(first)
    run = Path(first.hydra.runtime.output_dir)
    before = (run / "results.json").read_text()
    with pytest.raises(ValueError, match=r"has finished 6 steps, and trainer.max_steps=6; raise trainer.max_steps"):
        main(run_config("finetune", [*common, f"ckpt_path={run}"], "again"))
    assert (run / "results.json").read_text() == before
