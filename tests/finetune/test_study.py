"""The data-efficiency study: the report's numbers, and a tiny end-to-end study."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from metaft.study.driver import report, study


def _fake_run(d: Path, init: str, shots: str, seed: int, mse: float | None) -> None:
    d.mkdir(parents=True)
    data = {"overrides": [f"init={init}", f"target.shots={shots}", f"seed={seed}"], "shots": 50 if shots == "all" else int(shots)}
    data.update({"test/mse": mse} if mse is not None else {"status": "failed", "error": "boom"})
    (d / "results.json").write_text(json.dumps(data))


def test_report_table_by_hand(tmp_path):
    vals = {("random", "1"): [4.0, 5.0, 9.0], ("random", "all"): [1.0, 1.5, 2.0], ("maml", "1"): [2.0, 2.5],
            ("maml", "all"): [0.5, 0.7, 0.9]}
    n = 0
    for (init, k), vs in vals.items():
        for seed, v in enumerate(vs):
            _fake_run(tmp_path / "sweep" / str(n), init, k, seed, v)
            n += 1
    _fake_run(tmp_path / "sweep" / str(n), "maml", "1", 2, None)  # a failed seed: counted, not averaged
    text = report(tmp_path / "sweep", tmp_path / "out", "test/mse", order=["random", "maml"])
    # random, K=1: mean 6, s = sqrt(7), t(2) = 4.302653 -> 4.302653 * sqrt(7/3) = 6.572
    assert "| random | 6 ± 6.572 (n=3) | 1.5 ± 1.242 (n=3) |" in text
    # maml, K=1: mean 2.25, s = sqrt(0.125), t(1) = 12.706205 -> 12.706205 * 0.25 = 3.177
    assert "| maml | 2.25 ± 3.177 (n=2, 1 failed) | 0.7 ± 0.4968 (n=3) |" in text
    rows = list(csv.DictReader(open(tmp_path / "out" / "study.csv")))
    r = next(r for r in rows if r["init"] == "random" and r["K"] == "all")
    assert float(r["test/mse_mean"]) == pytest.approx(1.5) and float(r["k_numeric"]) == 50
    assert float(r["test/mse_ci95"]) == pytest.approx(4.302653 * 0.5 / math.sqrt(3), rel=1e-6)
    assert (tmp_path / "out" / "study.png").stat().st_size > 1000
    assert list((tmp_path / "out" / "tensorboard").glob("events.out.tfevents.*"))


def test_tiny_sinusoid_study_end_to_end(tmp_path, mlp_ckpt):
    # jobs=2: one sweep per init, side by side, reported together.
    text = study("sinusoid", {"maml": str(mlp_ckpt)}, tmp_path / "study", inits=["random", "maml"], shots=["1", "all"],
                 seeds=["0", "1"], extra=["trainer.max_steps=4", "trainer.val_check_interval=2"], jobs=2)
    runs = sorted((tmp_path / "study" / "sweep").rglob("results.json"))
    assert len(runs) == 8 and {f.parent.parent.name for f in runs} == {"part0", "part1"}
    # Each cell of the table is the mean of its two runs' test/mse.
    by_cell: dict[tuple[str, str], list[float]] = {}
    for f in runs:
        r = json.loads(f.read_text())
        assert r.get("status", "ok") == "ok", r
        k = next(o.split("=", 1)[1] for o in r["overrides"] if o.startswith("target.shots="))
        by_cell.setdefault((r["init"], k), []).append(r["test/mse"])
    rows = {r["init"] + "/" + r["K"]: r for r in csv.DictReader(open(tmp_path / "study" / "study.csv"))}
    for (init, k), vs in by_cell.items():
        assert float(rows[f"{init}/{k}"]["test/mse_mean"]) == pytest.approx(sum(vs) / 2)
    assert "| init | K=1 | K=all |" in text and (tmp_path / "study" / "study.md").is_file()
    # The same --out again would overwrite these runs or mix them with new ones: refused up front.
    before = sorted(p.stat().st_mtime_ns for p in (tmp_path / "study").rglob("*") if p.is_file())
    with pytest.raises(ValueError, match="is not empty .*choose a new directory"):
        study("sinusoid", {"maml": str(mlp_ckpt)}, tmp_path / "study", inits=["maml"], shots=["5"], seeds=["0"])
    assert sorted(p.stat().st_mtime_ns for p in (tmp_path / "study").rglob("*") if p.is_file()) == before


def test_ckpt_option_needs_a_name(capsys):
    from metaft.study.driver import main

    with pytest.raises(SystemExit):
        main(["sinusoid", "--ckpt", "outputs/best.ckpt"])
    assert "--ckpt takes NAME=PATH" in capsys.readouterr().err
