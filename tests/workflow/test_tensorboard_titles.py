"""The sinusoid fit image says its step and how well the fit is."""
from __future__ import annotations

import numpy as np

from metaft.runtime.figures import sinusoid_figure


def test_the_sinusoid_figure_carries_its_title():
    x = np.linspace(-5, 5, 20)
    fig = sinusoid_figure(x[:3], np.sin(x[:3]), x, np.sin(x), 0 * x, np.sin(x), 2,
                          title="step 500: val/mse 0.42; this task after 2 steps: MSE 0.1")
    assert fig.axes[0].get_title() == "step 500: val/mse 0.42; this task after 2 steps: MSE 0.1"


def test_validation_episodes_with_predictions_at_every_validation(run_config):
    import copy  # noqa: F401
    from functools import partial
    from pathlib import Path

    import torch
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from metaft.algorithms import MAML
    from metaft.models import Conv4
    from metaft.stages.meta import make_trainer
    from tests.integration.test_tensorboard import TinyImages

    cfg = run_config("train", ["logging.predictions=true", "trainer.max_steps=4", "trainer.val_check_interval=2"])
    dm = TinyImages(meta_batch_size=2, val_episodes=4, test_episodes=4, eval_batch_size=4, seed=0)
    torch.manual_seed(0)
    learner = MAML(net=Conv4(1, 16, filters=4, out_features=3), task="classification", inner_lr=0.1,
                   inner_steps=1, optimizer=partial(torch.optim.Adam, lr=1e-3))
    out = Path(cfg.hydra.runtime.output_dir)
    make_trainer(cfg, out).fit(learner, datamodule=dm)
    ea = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert len(ea.Images("val/episode_predictions")) == 2  # steps 2 and 4


def test_the_predictions_figure_marks_right_and_wrong_queries():
    import torch

    from metaft.runtime.figures import predictions_figure

    sx, sy = torch.rand(2, 1, 8, 8), torch.tensor([0, 1])
    qx, qy, pred = torch.rand(4, 1, 8, 8), torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 1])
    fig = predictions_figure(sx, sy, qx, qy, pred, title="step 2: 3/4 right")
    assert fig._suptitle.get_text() == "step 2: 3/4 right"
    wrong = [ax for ax in fig.axes if ax.get_title() == "-> 1"]
    assert len(wrong) == 1
    colours = [tuple(ax.spines["top"].get_edgecolor()) for ax in fig.axes if ax.get_frame_on()]
    assert len(colours) == 4 and len(set(colours)) == 2  # three green frames, one red
