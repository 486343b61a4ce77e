"""``python -m metaft.compare``: paired differences of runs scored on the same episodes, checked
against the t-interval of the differences written out here, and its refusals."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from metaft.compare import compare, main


def fake_run(root: Path, name: str, scores: np.ndarray, fingerprint: str = "f00d", split: str = "val") -> Path:
    run = root / name
    run.mkdir()
    (run / "results.json").write_text(json.dumps({f"{split}/acc": float(scores.mean()),
                                                  f"{split}_episodes_fingerprint": fingerprint}))
    # Rows in another order than the index: pairing must go by episode index, not by row.
    order = np.random.default_rng(len(name)).permutation(len(scores))
    lines = "".join(f"{i},{float(scores[i])!r},0.5\n" for i in order)
    (run / f"{split}_episodes.csv").write_text("episode,acc,loss\n" + lines)
    return run


def test_one_seed_matches_the_paired_t_interval(tmp_path):
    rng = np.random.default_rng(0)
    difficulty = rng.uniform(60, 100, 400)  # shared by both arms: pairing removes it
    a = difficulty + rng.normal(1.0, 2.0, 400)
    b = difficulty + rng.normal(0.0, 2.0, 400)
    r = compare([fake_run(tmp_path, "a", a)], [fake_run(tmp_path, "bb", b)], split="val", n_boot=20_000)
    d = a - b
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    assert r["diff"] == pytest.approx(d.mean(), abs=1e-9)
    assert (r["a"], r["b"]) == (pytest.approx(a.mean()), pytest.approx(b.mean()))
    # The percentile bootstrap of a mean of 400 values is the t-interval up to resampling noise.
    assert r["lo"] == pytest.approx(d.mean() - half, abs=0.03)
    assert r["hi"] == pytest.approx(d.mean() + half, abs=0.03)
    # Unpaired, the difficulty's spread (sd ~ 11.5) would swamp a 1-point difference; paired it is clear.
    assert r["lo"] > 0 and r["p"] < 1e-3
    assert r["episodes"] == 400 and r["seeds"] == 1


def test_seeds_are_the_outer_unit(tmp_path):
    # Two seeds per arm whose differences disagree (+2 and -2 on every episode): the mean is 0 and
    # the interval spans both seeds' values, however many episodes each has.
    base = np.linspace(50, 90, 200)
    a = [fake_run(tmp_path, f"a{s}", base + d) for s, d in enumerate((2.0, -2.0))]
    b = [fake_run(tmp_path, f"bb{s}", base) for s in range(2)]
    r = compare(a, b, split="val", n_boot=4000)
    assert r["diff"] == pytest.approx(0.0, abs=1e-9)
    assert r["lo"] == pytest.approx(-2.0) and r["hi"] == pytest.approx(2.0)
    assert r["seeds"] == 2


def test_refuses_runs_scored_on_other_episodes(tmp_path, capsys):
    a = fake_run(tmp_path, "a", np.full(10, 90.0), fingerprint="aaaa")
    b = fake_run(tmp_path, "bb", np.full(10, 80.0), fingerprint="bbbb")
    assert main([str(a), str(b), "--split", "val"]) == 2
    err = capsys.readouterr().err
    assert "different val episodes" in err and "aaaa" in err and "bbbb" in err


def test_names_the_command_that_writes_missing_scores(tmp_path, capsys):
    a = fake_run(tmp_path, "a", np.full(10, 90.0))
    b = fake_run(tmp_path, "bb", np.full(10, 80.0))
    assert main([str(a), str(b), "--split", "test"]) == 2  # only validation scores exist
    err = capsys.readouterr().err
    assert "no test per-episode scores" in err and f"--config-name eval ckpt_path={a}" in err
    assert main([str(a), f"{b},{b}", "--split", "val"]) == 2
    assert "same seeds" in capsys.readouterr().err


def test_prints_the_difference_and_the_method(tmp_path, capsys):
    a = fake_run(tmp_path, "a", np.array([90.0, 80.0, 100.0, 70.0]))
    b = fake_run(tmp_path, "bb", np.array([80.0, 80.0, 90.0, 70.0]))
    assert main([str(a), str(b), "--split", "val", "--boot", "500"]) == 0
    out = capsys.readouterr().out
    assert "val acc, 4 episodes x 1 seed(s): A 85.00, B 80.00" in out
    assert "A - B: +5.00" in out and "hierarchical percentile bootstrap" in out
