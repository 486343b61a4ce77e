"""TensorBoard output, read back with tensorboard's EventAccumulator (tags, steps and values) and
checked against references: results.json, the checkpoint, and the meta-batch recomputed by hand."""
from __future__ import annotations

import copy
import io
import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

from metaft.algorithms import MAML
from metaft.stages.monitor import sinusoid_fit
from metaft.data import Episode, EpisodicDataModule, SinusoidDataModule
from metaft.data.episodic import episode_generator
from metaft.models import MLP, Conv4
from metaft.stages.meta import make_trainer
from metaft.stages import main
from metaft.stages.meta import build

FAST = ["trainer.max_steps=20", "trainer.val_check_interval=10", "trainer.log_every_n_steps=5",
        "dataset.val_episodes=20", "dataset.test_episodes=30", "dataset.meta_batch_size=4", "seed=0"]


def events(run_dir: str | Path) -> EventAccumulator:
    kinds = ("scalars", "images", "histograms", "tensors")
    return EventAccumulator(str(Path(run_dir) / "tensorboard"), size_guidance={k: 0 for k in kinds}).Reload()


def scalars(ea: EventAccumulator, tag: str) -> dict[int, float]:
    return {e.step: e.value for e in ea.Scalars(tag)}


def walls(ea: EventAccumulator, tag: str) -> dict[int, float]:
    return {e.step: e.wall_time for e in ea.Scalars(tag)}


def decode(event) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))


def test_sinusoid_metasgd_run(run_config):
    cfg = run_config("train", ["algorithm=metasgd", *FAST])
    main(cfg)
    out = Path(cfg.hydra.runtime.output_dir)
    results = json.loads((out / "results.json").read_text())
    ea = events(out)

    # Train metrics are computed and written on logging steps only (every 5th batch).
    log_steps = [4, 9, 14, 19]
    for tag in ("train/loss", "train/mse_step0", "train/mse_step1", "train/grad_norm", "train/tasks_per_s",
                "lr-Adam", "inner_lr/mean", "inner_lr/min", "inner_lr/max"):
        assert sorted(scalars(ea, tag)) == log_steps, tag
    # After adaptation is the meta-loss of the same batch; before adaptation differs.
    loss, before, after = (scalars(ea, t) for t in ("train/loss", "train/mse_step0", "train/mse_step1"))
    for s in log_steps:
        assert after[s] == pytest.approx(loss[s], rel=1e-5)
        assert before[s] != pytest.approx(loss[s], rel=1e-3)
    assert list(scalars(ea, "lr-Adam").values()) == pytest.approx([cfg.algorithm.optimizer.lr] * 4)

    # tasks/s over batches 5..9 against the wall clock of the events written at steps 4 and 9.
    t = walls(ea, "train/loss")
    rate = scalars(ea, "train/tasks_per_s")
    assert rate[9] == pytest.approx(5 * 4 / (t[9] - t[4]), rel=0.3)
    # The window after validation starts after it (and its images and checkpoints).
    assert rate[14] > 5 * 4 / (t[14] - walls(ea, "val/mse")[9])

    # Meta-SGD's step sizes after the last step equal the final checkpoint's.
    state = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    alphas = torch.cat([v.reshape(-1) for k, v in state.items() if k.startswith("inner_lrs.")])
    assert alphas.numel() == sum(p.numel() for p in MLP(1, (40, 40), 1).parameters())
    for stat in ("mean", "min", "max"):
        assert scalars(ea, f"inner_lr/{stat}")[19] == pytest.approx(getattr(alphas, stat)().item(), rel=1e-6)
    histograms = {e.step: e.histogram_value for e in ea.Histograms("inner_lr/alpha")}
    assert sorted(histograms) == sorted(scalars(ea, "val/mse")) == [9, 19]
    assert histograms[19].num == alphas.numel()
    assert histograms[19].min == pytest.approx(alphas.min().item())
    assert histograms[19].max == pytest.approx(alphas.max().item())

    # Evaluation per inner step (regression: the loss is the metric, no separate loss_step tags).
    for stage in ("val", "test"):
        assert f"{stage}/mse_step1" in ea.Tags()["scalars"] and f"{stage}/loss_step0" not in ea.Tags()["scalars"]
        assert scalars(ea, f"{stage}/loss") == scalars(ea, f"{stage}/mse")

    # HParams: the flattened config in the session record, the final metrics equal results.json.
    assert scalars(ea, "hp/val_mse").popitem()[1] == pytest.approx(results["val/mse"], rel=1e-7)
    assert scalars(ea, "hp/test_mse").popitem()[1] == pytest.approx(results["test/mse"], rel=1e-7)
    plugin = {k: plugin_data_pb2.HParamsPluginData.FromString(v) for k, v in ea.PluginTagToContent("hparams").items()}
    assert set(plugin) == {"_hparams_/session_start_info", "_hparams_/session_end_info"}
    hp = plugin["_hparams_/session_start_info"].session_start_info.hparams
    assert hp["algorithm/_target_"].string_value == "metaft.algorithms.MetaSGD"
    assert hp["algorithm/inner_lr"].number_value == pytest.approx(cfg.algorithm.inner_lr)
    assert hp["algorithm/optimizer/lr"].number_value == pytest.approx(cfg.algorithm.optimizer.lr)
    assert hp["algorithm/first_order"].string_value == "False"
    assert hp["dataset/meta_batch_size"].number_value == 4
    assert hp["model/hidden"].string_value == "[40, 40]"
    assert hp["seed"].number_value == 0
    assert "algorithm/eval_inner_steps" not in hp  # null: left out
    assert plugin["_hparams_/session_end_info"].session_end_info.status == api_pb2.STATUS_SUCCESS

    # The sinusoid fit, drawn at every validation.
    fits = ea.Images("val/sinusoid_fit")
    assert [e.step for e in fits] == [9, 19]
    assert decode(fits[-1]).std() > 10  # a drawing, not a blank canvas

    # An evaluation run records its own session, with the overrides it was run with.
    ev = run_config("eval", [f"ckpt_path={out}/checkpoints/best.ckpt", "algorithm.eval_inner_steps=3"], "eval")
    main(ev)
    ev_out = Path(ev.hydra.runtime.output_dir)
    ev_results = json.loads((ev_out / "results.json").read_text())
    ea = events(ev_out)
    assert scalars(ea, "hp/test_mse").popitem()[1] == pytest.approx(ev_results["test/mse"], rel=1e-7)
    assert "hp/val_mse" not in ea.Tags()["scalars"]
    content = ea.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content)
    assert start.session_start_info.hparams["algorithm/eval_inner_steps"].number_value == 3


def test_sinusoid_fit_against_hand_adaptation():
    torch.manual_seed(0)
    dm = SinusoidDataModule(shots=5, seed=3)
    learner = MAML(net=MLP(1, (8, 8), 1), inner_lr=0.05, inner_steps=1, eval_inner_steps=2)
    fit = sinusoid_fit(learner, dm)
    x = torch.from_numpy(fit["x"]).view(-1, 1)
    sx, sy = torch.from_numpy(fit["support_x"]).view(-1, 1), torch.from_numpy(fit["support_y"]).view(-1, 1)
    # The drawn ground truth passes through the task's support points.
    assert np.interp(fit["support_x"], fit["x"], fit["truth"]) == pytest.approx(fit["support_y"], abs=5e-3)
    net = copy.deepcopy(learner.net)
    np.testing.assert_allclose(fit["before"], net(x).detach()[:, 0].numpy(), rtol=1e-5, atol=1e-6)
    for _ in range(2):  # two plain SGD steps on the support set
        grads = torch.autograd.grad(F.mse_loss(net(sx), sy), list(net.parameters()))
        with torch.no_grad():
            for p, g in zip(net.parameters(), grads):
                p -= 0.05 * g
    np.testing.assert_allclose(fit["after"], net(x).detach()[:, 0].numpy(), rtol=1e-5, atol=1e-6)


def test_grad_norm_is_taken_before_clipping(run_config):
    cfg = run_config("train", ["algorithm=maml", "algorithm.grad_clip=1e-4", "trainer.max_steps=1",
                               "trainer.log_every_n_steps=1", "dataset.meta_batch_size=3"])
    dm, learner = build(cfg)
    reference = copy.deepcopy(learner)
    out = Path(cfg.hydra.runtime.output_dir)
    make_trainer(cfg, out).fit(learner, datamodule=dm)
    ea = events(out)
    episode = dm.sample("train", 3, episode_generator(cfg.seed, "train", 0))  # the first meta-batch
    reference.meta_backward(episode)
    norm = torch.sqrt(sum((p.grad**2).sum() for p in reference.parameters()))
    assert scalars(ea, "train/grad_norm") == {0: pytest.approx(norm.item(), rel=1e-5)}
    assert norm > 1e-3  # far above the clip threshold: the logged norm is the unclipped one
    before = torch.stack([F.mse_loss(reference.net(episode.query_x[t]), episode.query_y[t]) for t in range(3)])
    assert scalars(ea, "train/mse_step0") == {0: pytest.approx(before.mean().item(), rel=1e-5)}


class TinyImages(EpisodicDataModule):
    """Random ``ways``-way image tasks with shuffled labels (class c is brighter with c)."""

    task = "classification"

    def __init__(self, ways: int = 3, shots: int = 2, queries: int = 3, size: int = 16, **common: int) -> None:
        super().__init__(**common)
        self.ways, self.shots, self.queries, self.size = ways, shots, queries, size

    def sample(self, split: str, n: int, generator: torch.Generator) -> Episode:
        def draw(k: int) -> tuple[torch.Tensor, torch.Tensor]:
            y = torch.stack([torch.randperm(self.ways * k, generator=generator) % self.ways for _ in range(n)])
            noise = torch.rand(n, self.ways * k, 1, self.size, self.size, generator=generator)
            return 0.5 * noise + 0.5 * (y.float() / self.ways).view(n, -1, 1, 1, 1), y

        (sx, sy), (qx, qy) = draw(self.shots), draw(self.queries)
        return Episode(sx, sy, qx, qy)


@pytest.mark.parametrize("images", [True, False])
def test_image_classification_run(run_config, images):
    cfg = run_config("train", [f"logging.images={images}", "logging.predictions=false", "trainer.max_steps=2",
                               "trainer.val_check_interval=2", "trainer.log_every_n_steps=1"])
    dm = TinyImages(meta_batch_size=2, val_episodes=4, test_episodes=4, eval_batch_size=4, seed=0)
    torch.manual_seed(0)
    learner = MAML(net=Conv4(1, 16, filters=4, out_features=3), task="classification", inner_lr=0.1,
                   inner_steps=1, optimizer=partial(torch.optim.Adam, lr=1e-3))
    reference = copy.deepcopy(learner.net)
    out = Path(cfg.hydra.runtime.output_dir)
    make_trainer(cfg, out).fit(learner, datamodule=dm)
    ea = events(out)
    tags = ea.Tags()

    # Accuracy and loss before and after adaptation, against the meta-batch scored by hand.
    episode = dm.sample("train", 2, episode_generator(0, "train", 0))  # the first meta-batch
    logits = [reference(episode.query_x[t]) for t in range(2)]
    ce = torch.stack([F.cross_entropy(z, episode.query_y[t]) for t, z in enumerate(logits)]).mean()
    acc = torch.stack([(z.argmax(-1) == episode.query_y[t]).float().mean() * 100 for t, z in enumerate(logits)]).mean()
    assert scalars(ea, "train/loss_step0")[0] == pytest.approx(ce.item(), rel=1e-4)
    assert scalars(ea, "train/acc_step0")[0] == pytest.approx(acc.item(), rel=1e-5)
    for s in (0, 1):
        assert scalars(ea, "train/loss_step1")[s] == pytest.approx(scalars(ea, "train/loss")[s], rel=1e-5)
        assert scalars(ea, "train/acc_step1")[s] == pytest.approx(scalars(ea, "train/acc")[s], rel=1e-5)
    assert scalars(ea, "val/loss") == scalars(ea, "val/loss_step1")
    assert "val/loss_step0" in tags["scalars"] and "val/acc_step0" in tags["scalars"]

    if not images:
        assert tags["images"] == []
        return
    assert sorted(tags["images"]) == ["episode/query", "episode/support"]  # no sinusoid fit here
    # The support grid: one row per class in label order, examples in episode order, 2px gaps.
    (support,) = ea.Images("episode/support")
    grid = decode(support)[..., 0].astype(int)
    size, pad = 16, 2
    assert grid.shape == (pad + 3 * (size + pad), pad + 2 * (size + pad))
    x, y = episode.support_x[0, :, 0], episode.support_y[0]
    for c in range(3):
        for j, img in enumerate(x[y == c]):
            cell = grid[pad + c * (size + pad):][:size, pad + j * (size + pad):][:, :size]
            assert np.abs(cell - (img.numpy() * 255).astype(int)).max() <= 1
    (query,) = ea.Images("episode/query")
    assert decode(query).shape[:2] == (pad + 3 * (size + pad), pad + 3 * (size + pad))
