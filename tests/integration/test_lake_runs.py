"""Lake's official one-shot runs (all_runs.zip of brendenlake/omniglot, as distributed) load, are
reported under their name, and score as Lake's own demo scores them; ``runs build`` makes runs of
the same construction (Lake's ten alphabets, drawers 1-8) and names them as built."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from metaft.data.omniglot.runs import (
    LAKE_ALPHABETS,
    LAKE_FINGERPRINT,
    OFFICIAL,
    OmniglotRunsDataModule,
    build_runs,
)

ROOT = Path(__file__).resolve().parents[2]
_DATA = Path(OmegaConf.load(ROOT / "conf" / "paths" / "default.yaml").data_dir)
DATA = _DATA if _DATA.is_absolute() else (ROOT / _DATA).resolve()
OFFICIAL_RUNS = DATA / "omniglot_runs"
OMNI = DATA / "omniglot"
pytestmark = pytest.mark.needs_data(OFFICIAL_RUNS / "run20", "Lake's official runs")


def hausdorff_accuracy(runs: OmniglotRunsDataModule) -> float:
    """Lake's baseline (demo_classification.py): each test item goes to the class image at the least
    modified Hausdorff distance (Dubuisson & Jain 1994) between their ink pixels, each set centred
    on its mean. Percent of the 400 trials right."""
    ep = runs.runs

    def points(img: torch.Tensor) -> torch.Tensor:
        p = img[0].gt(0.5).nonzero().double()
        return p - p.mean(0)

    right = 0
    for r in range(ep.num_tasks):
        sets = [points(x) for x in ep.support_x[r]]
        pts, sizes = torch.cat(sets), [len(c) for c in sets]
        for x, y in zip(ep.query_x[r], ep.query_y[r]):
            # One distance matrix to every class image's points, then split by class image.
            cost = [torch.maximum(d.min(1).values.mean(), d.min(0).values.mean())
                    for d in torch.cdist(points(x), pts).split(sizes, dim=1)]
            right += int(int(torch.stack(cost).argmin()) == int(y))
    return 100 * right / (ep.num_tasks * ep.query_y.shape[1])


def test_official_runs_load_and_are_named():
    dm = OmniglotRunsDataModule(str(OFFICIAL_RUNS), image_size=28)
    ep = dm.runs
    assert ep.support_x.shape == (20, 20, 1, 28, 28) and ep.query_x.shape == (20, 20, 1, 28, 28)
    assert all(torch.equal(y.sort().values, torch.arange(20)) for y in ep.query_y)  # every class tested once
    assert 0.03 < float(ep.support_x.mean()) < 0.15  # ink is the minority, and bright
    assert dm.runs_fingerprint == LAKE_FINGERPRINT and dm.describe()["runs"] == OFFICIAL


def test_official_runs_score_as_lakes_demo_on_two_runs():
    """The first two runs as the full 20 score them (``-m slow``, below): 11 and 13 of 20 right."""
    dm = OmniglotRunsDataModule(str(OFFICIAL_RUNS), image_size=105)
    dm.runs = dm.runs[0:2]
    assert hausdorff_accuracy(dm) == pytest.approx(100 * (11 + 13) / 40)


@pytest.mark.slow
def test_official_runs_score_as_lakes_demo():
    """Lake's README: the demo's modified Hausdorff distance gives a 38.8% average error rate (2.5
    CPU-minutes)."""
    acc = hausdorff_accuracy(OmniglotRunsDataModule(str(OFFICIAL_RUNS), image_size=105))
    assert acc == pytest.approx(61.25)  # 245 of 400: 38.75% error


@pytest.mark.needs_data(OMNI / "images_evaluation.zip", "Omniglot data")
def test_built_runs_follow_lakes_construction_and_are_named_built(tmp_path):
    import zipfile

    out = build_runs(OMNI, tmp_path / "lake", seed=0)
    with zipfile.ZipFile(OMNI / "images_evaluation.zip") as z:
        source = {z.read(n): n for n in z.namelist() if n.endswith(".png")}
    for r in range(1, 21):
        members = [source[p.read_bytes()] for p in sorted((out / f"run{r:02d}").glob("*/*.png"))]
        assert {m.split("/")[1] for m in members} == {LAKE_ALPHABETS[(r - 1) // 2]}
        drawers = {int(m.rsplit("_", 1)[1][:2]) for m in members}
        assert len(drawers) == 2 and max(drawers) <= 8
    dm = OmniglotRunsDataModule(str(out))
    assert dm.describe()["runs"] == "runs built by metaft (protocol=lake, seed=0), not Lake's official ones"
    # The earlier construction (every alphabet, any drawer) is still built the same, for its published numbers.
    old = OmniglotRunsDataModule(str(build_runs(OMNI, tmp_path / "all", seed=0, protocol="all")))
    assert old.runs_fingerprint == "824f5b40929221ee" and "protocol=all" in old.describe()["runs"]
    with pytest.raises(ValueError, match="--protocol must be one of lake, all"):
        build_runs(OMNI, tmp_path / "x", protocol="vinyals")


@pytest.mark.needs_data(OMNI / "images_background.zip", "Omniglot data")
def test_a_lake_checkpoint_scored_on_the_official_runs(run_config, tmp_path):
    """Through train.py: a (one-step) Lake-split checkpoint scored on the official runs; results.json
    names them, and a Vinyals-split checkpoint is refused there (it trained on their alphabets)."""
    from metaft.stages import main
    from tests.conftest import tiny_lake_protonet

    cfg = run_config("train", tiny_lake_protonet(DATA, tmp_path / "cache", "dataset.ways=20"), "train")
    main(cfg)
    ckpt = Path(cfg.hydra.runtime.output_dir) / "checkpoints" / "last.ckpt"
    ev = run_config("eval", [f"ckpt_path={ckpt}", "dataset=omniglot_runs", f"dataset.data_dir={OFFICIAL_RUNS}"], "eval")
    main(ev)
    res = json.loads((Path(ev.hydra.runtime.output_dir) / "results.json").read_text())
    assert res["runs"] == OFFICIAL and res["runs_fingerprint"] == LAKE_FINGERPRINT
    assert res["test/episodes"] == 20 and abs(res["test/acc"] * 4 - round(res["test/acc"] * 4)) < 1e-6
    assert res["class_check"] == "passed: none of the 659 scored classes was seen" and res["allow_seen_classes"] is False
