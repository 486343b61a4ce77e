"""Golden numbers: the short seeded runs of ``cases.py`` (stage 1 for every algorithm, eval, stage 2)
give exactly the stored fingerprints and, to within 1e-6 relative, the stored metrics and weights
(``golden.json``). A failure names every value that moved; a change meant to move them is re-recorded
with ``python -m tests.golden.record`` and named in its commit. The module takes about 30 s on one
core once the Omniglot cache is decoded.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import metaft.data  # noqa: F401  (registers the resolver paths/default.yaml uses)
from metaft.algorithms import catalogue
from tests.golden.cases import CASES, GOLDEN, Runner, differences, environment

ROOT = Path(__file__).resolve().parents[2]
STORED = json.loads(GOLDEN.read_text())


def _omniglot_dir() -> Path:
    """``paths.data_dir``/omniglot of the real config, as a run from the repo root reads it."""
    d = Path(OmegaConf.load(ROOT / "conf" / "paths" / "default.yaml").data_dir)
    return (d if d.is_absolute() else (ROOT / d).resolve()) / "omniglot"


@pytest.fixture(scope="module")
def runner(tmp_path_factory) -> Runner:
    """Runs each case once for the module (the warm-started case reuses its source's run)."""
    if STORED["environment"] != environment():
        pytest.skip(f"golden.json was recorded in {STORED['environment']}; here {environment()}: the numbers are "
                    "bit-exact for one machine and torch only (cases.environment). To check a change here, record "
                    "at the commit before it (python -m tests.golden.record --out FILE), then compare")
    return Runner(tmp_path_factory.mktemp("golden"))


def _marks(name: str) -> list:
    return [pytest.mark.needs_data(_omniglot_dir(), "Omniglot data")] if name.startswith("omniglot/") else []


@pytest.mark.parametrize("name", [pytest.param(c.name, marks=_marks(c.name)) for c in CASES])
def test_golden_numbers_unchanged(runner, name):
    assert name in STORED["cases"], f"{name} has no golden numbers: record them (python -m tests.golden.record)"
    diffs = differences(STORED["cases"][name], runner(name))
    assert not diffs, f"{name}: {len(diffs)} values moved:\n" + "\n".join(diffs[:40])


def test_every_case_is_recorded_and_every_algorithm_has_a_case():
    # A new algorithm config gets a golden run, and every regression learner one on the sinusoid.
    assert sorted(STORED["cases"]) == sorted(c.name for c in CASES)
    algorithms = sorted(p.stem for p in (ROOT / "conf" / "algorithm").glob("*.yaml"))
    trained = [c for c in CASES if c.config == "train"]
    assert sorted({c.algorithm for c in trained}) == algorithms
    regressing = catalogue.names(catalogue.regresses)
    assert regressing and set(regressing) <= {c.algorithm for c in trained if c.dataset == "sinusoid"}
    # The other stages run from those checkpoints.
    assert {c.config for c in CASES} == {"train", "eval", "finetune"}


def test_differences_catch_small_moves_and_changed_fingerprints():
    stored = {"results": {"test/mse": 1.0, "test_episodes_fingerprint": "ab", "train_stream": 2},
              "weights": {"w": [1e-9, 4.0]}}
    assert differences(stored, json.loads(json.dumps(stored))) == []
    moved = json.loads(json.dumps(stored))
    moved["results"]["test/mse"] = 1.0 + 2e-6
    moved["results"]["test_episodes_fingerprint"] = "ac"
    moved["weights"]["w"][1] = 4.0 * (1 + 2e-6)
    found = differences(stored, moved)
    assert [d.split(":")[0] for d in found] == ["/results/test/mse", "/results/test_episodes_fingerprint", "/weights/w[1]"]
    within = json.loads(json.dumps(stored))
    within["results"]["test/mse"] = 1.0 + 5e-7
    within["weights"]["w"][0] = 2e-6  # a cancelling sum: compared to within REL of the absolute sum (4.0)
    assert differences(stored, within) == []
    del within["results"]["train_stream"]
    assert differences(stored, within) == ["/results/train_stream: missing (expected 2)"]
