"""The sinusoid fit image says its step and how well the fit is."""
from __future__ import annotations

import numpy as np

from metaft.runtime.callbacks import sinusoid_figure


def test_the_sinusoid_figure_carries_its_title():
    x = np.linspace(-5, 5, 20)
    fig = sinusoid_figure(x[:3], np.sin(x[:3]), x, np.sin(x), 0 * x, np.sin(x), 2,
                          title="step 500: val/mse 0.42; this task after 2 steps: MSE 0.1")
    assert fig.axes[0].get_title() == "step 500: val/mse 0.42; this task after 2 steps: MSE 0.1"
