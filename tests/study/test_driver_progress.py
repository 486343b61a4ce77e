"""The study says what it does while it does it: a complete --help, progress lines inside full
fine-tuning's pieces, and validation problems no more numerous than the test problems asked for."""
from __future__ import annotations

import subprocess
import sys

from metaft.study.driver import load_config, main, validation_problems
from tests.study.test_driver import TOY, maml_ckpts
from tests.workflow.conftest import cli_env


def test_help_shows_the_whole_usage():
    out = subprocess.run([sys.executable, "-m", "metaft.study", "--help"], capture_output=True, text=True,
                         env=cli_env(), timeout=120).stdout
    assert "The data-efficiency study, end to end:" in out
    assert "python -m metaft.study report DIR" in out and "(1) checks every" in out and "study.md" in out


def test_validation_problems_are_scaled_to_the_problems_asked_for():
    assert validation_problems(load_config("sinusoid")) == 100  # the protocol's own numbers: unchanged
    assert validation_problems(load_config("omniglot")) == 50
    assert validation_problems(load_config("omniglot_cpu")) == 5
    assert validation_problems(load_config("sinusoid", ["target.problems=20"])) == 20
    assert validation_problems(load_config("omniglot", ["target.finetune_problems=8"])) == 8


def test_full_fine_tuning_reports_progress_inside_its_piece(tmp_path, capsys):
    toy = [o for o in TOY if not o.startswith("adapt.finetune.val_problems")] + ["adapt.finetune.val_problems=50",
                                                                               "target.chunk=2"]
    assert main(["sinusoid", *toy, "target.shots=[2]", "--out", str(tmp_path / "s"), "--ckpt",
                 maml_ckpts(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    chosen = [line for line in lines if line.startswith("N=None K=2 maml finetune: ")]
    # Chosen once for both seeds, on 3 validation problems each, not val_problems=50: no more
    # than the 3 test problems fine-tuned.
    assert len(chosen) == 1 and "chosen on 3 validation problems x 2 seeds in " in chosen[0], chosen
    assert chosen[0].startswith("N=None K=2 maml finetune: start keep, ")
    piece = [line for line in lines if line.startswith("N=None K=2 maml seed 0 finetune")]
    assert piece[0] == "N=None K=2 maml seed 0 finetune: fine-tuning 3 test problems"
    assert piece[1].startswith("N=None K=2 maml seed 0 finetune: 2/3 test problems fine-tuned, ")
    assert piece[-1].startswith("N=None K=2 maml seed 0 finetune: 3 problems in ")
