"""Item 5 of issue 28: support sets nested across K (K=5's contains K=1's, the same queries), and
the labels per class each init needs to reach a stated accuracy."""
from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from metaft.data.episode import Episode
from metaft.study import labels
from metaft.study.driver import main
from metaft.study.targets import Problems, nested
from tests.gaussian_clusters import GaussianClusters
from tests.study.test_driver import TOY, maml_ckpts


class Clusters(GaussianClusters):
    """GaussianClusters taking the study's ``eval_queries`` (its test examples per class)."""

    def __init__(self, eval_queries: int = 5, **kw) -> None:
        super().__init__(**kw)


def _rows(x: torch.Tensor) -> set[tuple[float, ...]]:
    return {tuple(r.tolist()) for r in x.flatten(1)}


def test_nested_keeps_the_first_k_examples_of_each_class_in_order():
    g = torch.Generator().manual_seed(0)
    sy = torch.stack([torch.arange(3).repeat(4)[torch.randperm(12, generator=g)] for _ in range(2)])  # shuffled labels
    sx = torch.randn(2, 12, 5, generator=g, dtype=torch.float64)
    ep = Episode(sx, sy, torch.randn(2, 6, 5, generator=g, dtype=torch.float64), torch.arange(3).repeat(2).expand(2, 6))
    one, two = nested(ep, 1), nested(ep, 2)
    for p in range(2):
        for c in range(3):
            where = (sy[p] == c).nonzero().flatten()  # by hand: positions of class c, in order
            torch.testing.assert_close(one.support_x[p][one.support_y[p] == c], sx[p, where[:1]])
            torch.testing.assert_close(two.support_x[p][two.support_y[p] == c], sx[p, where[:2]])
        assert _rows(one.support_x[p]) < _rows(two.support_x[p]) < _rows(sx[p])  # nested
        kept = torch.cat([(sy[p] == c).nonzero().flatten()[:2] for c in range(3)]).sort().values
        torch.testing.assert_close(two.support_x[p], sx[p, kept])  # the original order
    assert one.query_x is ep.query_x and one.query_y is ep.query_y
    reg = Episode(sx, sx[..., :1], sx, sx[..., :1])
    torch.testing.assert_close(nested(reg, 3, regression=True).support_x, sx[:, :3])
    with pytest.raises(ValueError, match="K=5 needs at least 5 support examples of every class"):
        nested(ep, 5)


def _cfg(dataset: dict, shots: list, nest: bool) -> OmegaConf:
    return OmegaConf.create({"dataset": dataset, "target": {
        "shots": shots, "all_shots": 6, "test_per_class": 3, "split": "test", "problems": 5, "seed": 7, "chunk": 3,
        "nested": nest}})


@pytest.mark.parametrize("kind", ["classification", "regression"])
def test_the_study_draws_nested_problems_once_at_the_largest_k(kind):
    if kind == "classification":
        dataset, ways = {"_target_": "tests.study.test_labels.Clusters"}, 3
    else:
        dataset, ways = {"_target_": "metaft.data.SinusoidDataModule"}, None
    sets = Problems(_cfg(dataset, [1, 2, "all"], True), ways, 4, kind == "regression")
    (t1, v1), (t2, v2), (t6, v6) = sets.at(1), sets.at(2), sets.at("all")
    for small, big in ((t1, t2), (t2, t6), (v1, v2), (v2, v6)):
        for a, b in zip(small, big):
            torch.testing.assert_close(a.query_x, b.query_x)  # the same problems ...
            assert all(_rows(a.support_x[p]) < _rows(b.support_x[p]) for p in range(a.num_tasks))  # ... more labels
    assert sum(ep.num_tasks for ep in t1) == 5 and sum(ep.num_tasks for ep in v1) == 4
    assert t6[0].support_x.shape[1] == 6 * (ways or 1) and t1[0].support_x.shape[1] == (ways or 1)
    # The test and validation problems are different problems (val classes or functions).
    assert _rows(t6[0].query_x[0]).isdisjoint(_rows(v6[0].query_x[0]))
    # nested=false draws each K afresh: other queries (the switch does something).
    fresh = Problems(_cfg(dataset, [1, 2, "all"], False), ways, 4, kind == "regression")
    assert not torch.allclose(fresh.at(1)[0][0].query_x, fresh.at(2)[0][0].query_x)


def test_labels_needed_interpolates_in_log_k():
    ks, acc = [1, 5, 15], [50.0, 80.0, 95.0]
    assert labels.needed(ks, acc, 90.0) == pytest.approx(5 * 3 ** (2 / 3))  # exp(log 5 + 2/3 log 3)
    assert labels.needed(ks, acc, 80.0) == 5 and labels.needed(ks, acc, 40.0) == 1
    assert math.isinf(labels.needed(ks, acc, 99.0))
    assert labels.needed([2, 8], [1.0, 0.25], 0.5, lower=True) == pytest.approx(2 * 4 ** (2 / 3))  # MSE
    with pytest.raises(ValueError, match="Ks ascending"):
        labels.needed([5, 1], [1.0, 2.0], 1.5)


def test_the_labels_table_gives_each_inits_mean_and_range_over_seeds():
    rows = []
    for seed, curve in (("0", {"1": [40, 60], "5": [90, 90]}), ("1", {"1": [60, 60], "5": [80, 80]})):
        for shots, vals in curve.items():
            rows += [{"ways": "5", "adaptation": "probe", "init": "a", "seed": seed, "shots": shots, "metric": str(v)}
                     for v in vals]
    text = "\n".join(labels.table(rows, [55.0, 85.0], all_shots=15))
    # seed 0: 50 at K=1, 90 at K=5 -> 55 at exp(log 5 * 5/40); seed 1: 60 at K=1 (<= 1), never 85
    k0 = math.exp(math.log(5) * 5 / 40)
    assert "### 5-way, probe" in text
    assert f"| a | {(k0 + 1) / 2:.1f} [1.0, {k0:.1f}] | > 5 (1/2 seeds) |" in text


def test_the_report_has_the_labels_table(tmp_path):
    out = tmp_path / "study"
    assert main(["sinusoid", *TOY, "adapt.inner_grid.max_steps=1", "--out", str(out), "--ckpt", maml_ckpts(tmp_path)]) == 0
    text = (out / "study.md").read_text()
    assert "## Labels per class needed" in text and "### regression, probe" in text
