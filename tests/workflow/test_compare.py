"""``python -m metaft.compare``: paired differences of runs scored on the same episodes, checked
against scipy's t intervals for each design (one pair; pairs on their own episodes, nested; pairs on
one episode set, crossed), its refusals, and the README's example on a real 2 x 2 sweep."""
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


def t_interval(x: np.ndarray) -> tuple[float, float, float]:
    """scipy's t interval and p-value of the mean of x (the reference)."""
    lo, hi = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    return lo, hi, stats.ttest_1samp(x, 0.0).pvalue


def test_one_seed_matches_the_paired_t_interval(tmp_path):
    rng = np.random.default_rng(0)
    difficulty = rng.uniform(60, 100, 400)  # shared by both arms: pairing removes it
    a = difficulty + rng.normal(1.0, 2.0, 400)
    b = difficulty + rng.normal(0.0, 2.0, 400)
    r = compare([fake_run(tmp_path, "a", a)], [fake_run(tmp_path, "bb", b)], split="val")
    d = a - b
    lo, hi, p = t_interval(d)
    assert r["diff"] == pytest.approx(d.mean(), abs=1e-9)
    assert (r["a"], r["b"]) == (pytest.approx(a.mean()), pytest.approx(b.mean()))
    assert (r["lo"], r["hi"], r["p"]) == (pytest.approx(lo, abs=1e-9), pytest.approx(hi, abs=1e-9), pytest.approx(p, rel=1e-6))
    # Unpaired, the difficulty's spread (sd ~ 11.5) would swamp a 1-point difference; paired it is clear.
    assert r["lo"] > 0 and r["p"] < 1e-3
    assert r["episodes"] == 400 and r["seeds"] == 1 and r["design"] == "one pair"
    assert "not the spread between training runs" in r["method"]


def test_pairs_on_their_own_episodes_get_a_t_interval_on_the_pair_means(tmp_path):
    # As after a sweep: seed s of A and seed s of B share episodes, other seeds have others.
    rng = np.random.default_rng(1)
    a_runs, b_runs, means = [], [], []
    for s, shift in enumerate((1.5, 0.2, 0.9)):
        difficulty = rng.uniform(60, 100, 50)
        a, b = difficulty + shift + rng.normal(0, 1, 50), difficulty + rng.normal(0, 1, 50)
        a_runs.append(fake_run(tmp_path, f"a{s}", a, fingerprint=f"seed{s}"))
        b_runs.append(fake_run(tmp_path, f"bb{s}", b, fingerprint=f"seed{s}"))
        means.append((a - b).mean())
    r = compare(a_runs, b_runs, split="val")
    lo, hi, p = t_interval(np.array(means))  # 2 df: the seeds are the units
    assert r["design"] == "nested" and "nested" in r["method"]
    assert r["diff"] == pytest.approx(np.mean(means))
    assert (r["lo"], r["hi"], r["p"]) == (pytest.approx(lo), pytest.approx(hi), pytest.approx(p, rel=1e-6))
    assert [x["diff"] for x in r["pairs"]] == pytest.approx(means)


def test_pairs_on_one_episode_set_get_the_crossed_interval(tmp_path):
    # Two pairs on the same episodes whose differences disagree (+2 and -2 on every episode): the
    # mean is 0, the episodes have no part in the spread, and with 2 pairs the interval is t(1)'s.
    base = np.linspace(50, 90, 200)
    a = [fake_run(tmp_path, f"a{s}", base + d) for s, d in enumerate((2.0, -2.0))]
    b = [fake_run(tmp_path, f"bb{s}", base) for s in range(2)]
    r = compare(a, b, split="val")
    lo, hi, _ = t_interval(np.array([2.0, -2.0]))
    assert r["diff"] == pytest.approx(0.0, abs=1e-9) and r["design"] == "crossed"
    assert (r["lo"], r["hi"]) == (pytest.approx(lo), pytest.approx(hi))
    assert r["seeds"] == 2 and "crossed" in r["method"]


def test_refuses_runs_scored_on_other_episodes(tmp_path, capsys):
    a = fake_run(tmp_path, "a", np.full(10, 90.0), fingerprint="aaaa")
    b = fake_run(tmp_path, "bb", np.full(10, 80.0), fingerprint="bbbb")
    assert main([str(a), str(b), "--split", "val"]) == 2
    err = capsys.readouterr().err
    assert "different val episodes" in err and "aaaa" in err and "bbbb" in err


def test_pairs_in_another_seed_order_are_named(tmp_path, capsys):
    a = [fake_run(tmp_path, f"a{s}", np.full(10, 90.0), fingerprint=f"seed{s}") for s in range(2)]
    b = [fake_run(tmp_path, f"bb{s}", np.full(10, 80.0), fingerprint=f"seed{s}") for s in range(2)]
    assert main([f"{a[0]},{a[1]}", f"{b[1]},{b[0]}", "--split", "val"]) == 2
    err = capsys.readouterr().err
    assert f"{b[0]} of B has {a[0]}'s episodes: list B's runs in A's seed order" in err


def test_refuses_pairs_that_only_partly_share_episodes(tmp_path, capsys):
    fps = ("x", "x", "y")
    a = [fake_run(tmp_path, f"a{s}", np.full(10, 90.0) + s, fingerprint=fp) for s, fp in enumerate(fps)]
    b = [fake_run(tmp_path, f"bb{s}", np.full(10, 80.0), fingerprint=fp) for s, fp in enumerate(fps)]
    assert main([",".join(map(str, a)), ",".join(map(str, b)), "--split", "val"]) == 2
    assert "some pairs share their val episodes (x) and others do not" in capsys.readouterr().err


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
    assert main([str(a), str(b), "--split", "val"]) == 0
    out = capsys.readouterr().out
    assert "val acc, 4 episodes x 1 seed pair(s), one pair of runs: A 85, B 80" in out
    # differences 10, 0, 10, 0: mean 5, sd 5.77, half-width t(3) * 5.77 / 2 = 9.19
    assert "A - B: +5 [-4.187, +14.19] (95% t interval over episodes (one seed" in out


def test_the_readme_example_on_a_real_sweep(tmp_path):
    """``train.py -m algorithm=maml,anil seed=1,2`` then ``metaft.compare SW/0,SW/1 SW/2,SW/3``:
    each seed's test episodes differ, so seed s of MAML is paired with seed s of ANIL (nested)."""
    import subprocess
    import sys

    from .conftest import FAST, cli_env, train_cli

    sweep = tmp_path / "sweep"
    proc = train_cli(["-m", "algorithm=maml,anil", "seed=1,2", *FAST, f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = [sweep / str(i) for i in range(4)]
    overrides = [json.loads((j / "results.json").read_text())["overrides"] for j in jobs]
    assert [[o for o in ov if o.split("=")[0] in ("algorithm", "seed")] for ov in overrides] == [
        ["algorithm=maml", "seed=1"], ["algorithm=maml", "seed=2"], ["algorithm=anil", "seed=1"], ["algorithm=anil", "seed=2"]]
    fps = [json.loads((j / "results.json").read_text())["test_episodes_fingerprint"] for j in jobs]
    assert fps[0] == fps[2] and fps[1] == fps[3] and fps[0] != fps[1]  # the seed moves the episodes
    out = subprocess.run([sys.executable, "-m", "metaft.compare", f"{jobs[0]},{jobs[1]}", f"{jobs[2]},{jobs[3]}"],
                         cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "10 episodes x 2 seed pair(s), each pair on its own episodes (nested)" in out.stdout

    def scores(job):
        rows = np.loadtxt(job / "test_episodes.csv", delimiter=",", skiprows=1)
        return rows[np.argsort(rows[:, 0]), 1]

    means = np.array([(scores(jobs[s]) - scores(jobs[s + 2])).mean() for s in (0, 1)])
    r = compare(jobs[:2], jobs[2:])
    lo, hi, p = t_interval(means)
    assert (r["diff"], r["lo"], r["hi"], r["p"]) == (pytest.approx(means.mean()), pytest.approx(lo), pytest.approx(hi),
                                                    pytest.approx(p, rel=1e-6))
    assert f"A - B: {r['diff']:+.4g} [{r['lo']:+.4g}, {r['hi']:+.4g}] (95% t interval on seed means" in out.stdout
    # Seeds listed in other orders are not pairs: refused, naming the run that has the episodes.
    crossed = subprocess.run([sys.executable, "-m", "metaft.compare", f"{jobs[0]},{jobs[1]}", f"{jobs[3]},{jobs[2]}"],
                             cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert crossed.returncode == 2 and "list B's runs in A's seed order" in crossed.stderr
