"""``python -m metaft.report`` on a synthetic tree of results.json files, against numbers worked
out by hand, and Student's t against scipy."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from metaft.report import main, mean_ci95, report, t975


def write(path: Path, overrides: list[str], **metrics) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps({"overrides": overrides, **metrics}))


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """MAML: test/mse 1, 2, 3 over seeds 1-3; ANIL: 10, 14 over seeds 1-2 (overrides in another
    order, plus Hydra's own); Reptile: one failed run; Meta-SGD: one seed."""
    sweep = tmp_path / "multirun" / "2026-01-01" / "00-00-00"
    common = "trainer.max_steps=100"
    for i, (seed, mse) in enumerate([(1, 1.0), (2, 2.0), (3, 3.0)]):
        write(sweep / str(i), ["algorithm=maml", f"seed={seed}", common],
              **{"test/mse": mse, "test/mse_ci95": 0.1, "test/mse_step0": 99.0, "val/mse": mse + 1, "test/episodes": 10})
    write(sweep / "3", [common, "seed=1", "algorithm=anil", "hydra/launcher=slurm"], **{"test/mse": 10.0, "val/mse": 1.0})
    write(sweep / "4", ["algorithm=anil", "seed=2", common, "hydra.launcher.partition=x"], **{"test/mse": 14.0, "val/mse": 3.0})
    (sweep / "5").mkdir()
    (sweep / "5" / "results.json").write_text(json.dumps(
        {"status": "failed", "error": "ValueError: boom", "overrides": ["algorithm=reptile", "seed=1", common]}))
    write(sweep / "6", ["algorithm=metasgd", "seed=1", common], **{"test/mse": 5.0, "val/mse": 5.0})
    write(sweep / ".submitit" / "7", ["algorithm=maml", "seed=9", common], **{"test/mse": 1000.0})  # ignored
    return sweep


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_groups_mean_and_student_t_interval_by_hand(tree: Path):
    text = report(tree)
    groups = {row["group"]: row for row in read_csv(tree / "report_groups.csv")}
    assert list(groups) == ["algorithm=maml", "algorithm=metasgd", "algorithm=anil", "algorithm=reptile"]  # best first
    maml, anil = groups["algorithm=maml"], groups["algorithm=anil"]
    # MAML: mean 2, s = 1, t(0.975, 2) = 4.302653 -> 4.302653 / sqrt(3) = 2.484138
    assert (maml["n"], maml["failed"]) == ("3", "0")
    assert float(maml["test/mse_mean"]) == pytest.approx(2.0)
    assert float(maml["test/mse_ci95"]) == pytest.approx(2.484138, abs=1e-6)
    assert float(maml["val/mse_mean"]) == pytest.approx(3.0)
    # ANIL: mean 12, s = sqrt(8), t(0.975, 1) = 12.706205 -> 12.706205 * sqrt(8) / sqrt(2) = 25.41241
    assert float(anil["test/mse_mean"]) == pytest.approx(12.0)
    assert float(anil["test/mse_ci95"]) == pytest.approx(25.41241, abs=1e-5)
    # One seed: a mean, no interval. A failed run is counted, not averaged.
    assert float(groups["algorithm=metasgd"]["test/mse_mean"]) == 5.0
    assert math.isnan(float(groups["algorithm=metasgd"]["test/mse_ci95"]))
    assert (groups["algorithm=reptile"]["n"], groups["algorithm=reptile"]["failed"]) == ("0", "1")
    # Only headline metrics get columns (no per-step, CI, episode counts); test first.
    assert [k for k in maml if k.endswith("_mean")] == ["test/mse_mean", "val/mse_mean"]

    assert "| algorithm=maml | 3 | 0 | 2 ± 2.484 | 3 ± 2.484 |" in text
    assert "Student's t" in text and "`trainer.max_steps=100`" in text
    assert (tree / "report.md").read_text() == text
    assert (tree / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_runs_table_lists_every_run_with_its_seed_and_error(tree: Path):
    report(tree)
    runs = read_csv(tree / "report_runs.csv")
    assert len(runs) == 7  # the copy under .submitit is not a run
    by_dir = {r["run"]: r for r in runs}
    assert by_dir["3"]["group"] == "algorithm=anil" and by_dir["3"]["seed"] == "1"
    assert by_dir["5"]["status"] == "failed" and by_dir["5"]["error"] == "ValueError: boom"
    assert float(by_dir["4"]["test/mse"]) == 14.0


def test_metric_option_sorts_and_plots_by_it(tree: Path, tmp_path: Path):
    report(tree, out=tmp_path / "rep", metric="val/mse")
    groups = [r["group"] for r in read_csv(tmp_path / "rep" / "report_groups.csv")]
    assert groups[:3] == ["algorithm=anil", "algorithm=maml", "algorithm=metasgd"]  # val/mse 2 < 3 < 5
    assert (tmp_path / "rep" / "report.png").is_file()
    with pytest.raises(ValueError, match="--metric test/acc is not among"):
        report(tree, out=tmp_path / "rep", metric="test/acc")


def test_accuracy_sorts_higher_first(tmp_path: Path):
    write(tmp_path / "0", ["algorithm=maml", "seed=1"], **{"test/acc": 90.0})
    write(tmp_path / "1", ["algorithm=anil", "seed=1"], **{"test/acc": 95.0})
    report(tmp_path)
    assert [r["group"] for r in read_csv(tmp_path / "report_groups.csv")] == ["algorithm=anil", "algorithm=maml"]


def test_single_run_directory(tmp_path: Path):
    write(tmp_path, ["seed=3"], **{"test/mse": 0.5, "test/mse_ci95": 0.01})
    text = report(tmp_path)
    assert "| . | (all runs) | 3 | ok | 0.5 ± 0.01 |" in text


def test_cli_errors_say_what_to_give(tmp_path: Path, capsys):
    assert main([str(tmp_path / "missing")]) == 2
    assert "no such run or sweep directory" in capsys.readouterr().err
    assert main([str(tmp_path)]) == 2
    assert "no results.json under" in capsys.readouterr().err


def test_t_quantile_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in [*range(1, 60), 100, 1000]:
        assert t975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=2e-6), df
    with pytest.raises(ValueError):
        t975(0)


def test_mean_ci95_small_cases():
    assert mean_ci95([]) == (pytest.approx(math.nan, nan_ok=True), pytest.approx(math.nan, nan_ok=True))
    m, ci = mean_ci95([4.0])
    assert m == 4.0 and math.isnan(ci)
    m, ci = mean_ci95([1.0, 3.0])  # s = sqrt(2): 12.706205 * sqrt(2) / sqrt(2)
    assert (m, ci) == (2.0, pytest.approx(12.706205))


def test_counts_read_as_english(tmp_path: Path):
    write(tmp_path / "0", ["algorithm=maml", "seed=1"], **{"test/acc": 90.0})
    write(tmp_path / "1", ["algorithm=maml", "seed=2"], **{"test/acc": 92.0})
    assert "2 runs (0 failed) in 1 group," in report(tmp_path)


def test_the_t_values_explained_are_those_of_the_seed_counts_present(tmp_path: Path):
    sweep = tmp_path / "sweep"
    for i, (algorithm, seed) in enumerate([("maml", 1), ("maml", 2), ("anil", 1), ("anil", 2)]):
        write(sweep / str(i), [f"algorithm={algorithm}", f"seed={seed}"], **{"test/mse": float(i)})
    text = report(sweep)
    assert "(t = 12.71 for 2 seeds, not 1.96)" in text and "4.30" not in text
    write(sweep / "4", ["algorithm=anil", "seed=3"], **{"test/mse": 1.0})
    assert "(t = 12.71 for 2 seeds, t = 4.30 for 3 seeds, not 1.96)" in report(sweep)
