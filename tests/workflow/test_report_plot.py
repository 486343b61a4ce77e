"""The report's plot: short, rounded labels; a title; which way is better; CIs only where they exist."""
from __future__ import annotations

import math

from metaft.report import Group, Run, figure, short_labels


def group(name: str, values: list[float]) -> Group:
    runs = [Run(str(i), [*name.split(), f"seed={i}"], {"val/mse": v}) for i, v in enumerate(values)]
    mean = sum(values) / len(values)
    ci = math.nan if len(values) == 1 else 0.1
    return Group(name, runs, {"val/mse": (mean, ci)})


def test_labels_round_long_floats_and_keep_only_the_last_part_of_each_key():
    names = ["algorithm.inner_lr=0.012345678901234567 algorithm.optimizer.lr=1.0000000000000002e-05",
             "algorithm.inner_lr=0.5 algorithm.optimizer.lr=0.001 model.hidden=[40,40]"]
    assert short_labels(names) == ["inner_lr=0.01235 lr=1e-05", "inner_lr=0.5 lr=0.001 hidden=[40,40]"]
    # Two keys ending alike keep their full names.
    assert short_labels(["dataset.shots=5 target.shots=1"]) == ["dataset.shots=5 target.shots=1"]


def test_the_plot_has_a_title_says_which_way_is_better_and_promises_no_ci_for_one_run():
    groups = [group("algorithm.inner_lr=0.012345678901234567", [1.0, 1.2]), group("algorithm.inner_lr=0.5", [2.0])]
    ax = figure(groups, "val/mse", "sweep: val/mse").axes[0]
    assert ax.get_title() == "sweep: val/mse"
    assert "lower is better" in ax.get_xlabel()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert sorted(legend) == ["mean of one run (no CI)", "mean ± 95% CI over seeds", "seed"]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["inner_lr=0.01235", "inner_lr=0.5"]
    single = figure([group("algorithm.inner_lr=0.5", [2.0])], "val/mse").axes[0]
    assert [t.get_text() for t in single.get_legend().get_texts()] == ["mean of one run (no CI)", "seed"]
