"""Figures both stages draw into TensorBoard: a regression fit, and image predictions marked
right or wrong (matplotlib's ``Figure``, imported only by runs that draw)."""
from __future__ import annotations

from typing import Any

import numpy as np
from torch import Tensor


def sinusoid_figure(support_x: np.ndarray, support_y: np.ndarray, x: np.ndarray, truth: np.ndarray,
                    before: np.ndarray, after: np.ndarray, steps: int, title: str = "",
                    labels: tuple[str, str, str] | None = None) -> Any:
    """The fit of one task; ``title`` says when and how well (the step and the MSEs).
    ``labels``: the legend's (before, after, points) names, if not adaptation's."""
    from matplotlib.figure import Figure  # imported here: only runs that draw pay for it

    fig = Figure(figsize=(5, 3.5), dpi=80)
    ax = fig.add_subplot()
    ax.plot(x, truth, color="black", lw=2, label="ground truth")
    names = labels or ("before adaptation", f"after {steps} step{'s' * (steps != 1)}", "support")
    ax.plot(x, before, color="tab:blue", ls="--", label=names[0])
    ax.plot(x, after, color="tab:red", label=names[1])
    ax.scatter(support_x, support_y, color="tab:red", marker="^", zorder=3, label=f"{names[2]} ({len(support_x)})")
    ax.set_xlabel("x")
    if title:
        ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7, loc="best", framealpha=0.7)
    fig.tight_layout()
    return fig


def predictions_figure(support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor, pred: Tensor,
                       title: str = "") -> Any:
    """A row per class: its support images, then its queries framed green (predicted right) or
    red (wrong, with the predicted class)."""
    from matplotlib.figure import Figure

    classes = [int(c) for c in support_y.unique()]
    shots = max(int((support_y == c).sum()) for c in classes)
    queries = max(int((query_y == c).sum()) for c in classes)
    cols = shots + queries
    fig = Figure(figsize=(0.75 * cols + 0.6, 0.8 * len(classes) + 0.6), dpi=80)
    axes = fig.subplots(len(classes), cols, squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_frame_on(False)
    for r, c in enumerate(classes):
        axes[r][0].set_ylabel(f"class {c}", fontsize=7)
        for j, img in enumerate(support_x[support_y == c]):
            axes[r][j].imshow(img[0].float().numpy(), cmap="gray")
        for j, (img, p) in enumerate(zip(query_x[query_y == c], pred[query_y == c])):
            ax = axes[r][shots + j]
            ax.imshow(img[0].float().numpy(), cmap="gray")
            ok = int(p) == c
            ax.set_frame_on(True)
            for spine in ax.spines.values():
                spine.set_edgecolor("tab:green" if ok else "tab:red")
                spine.set_linewidth(2.5)
            if not ok:
                ax.set_title(f"-> {int(p)}", fontsize=7, color="tab:red", pad=1)
    axes[0][0].set_title("support", fontsize=7, pad=1, loc="left")
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return fig
