"""`python train.py --help`: what metaft is, its stages, the groups users pick, the settings changed most."""
from __future__ import annotations

import subprocess
import sys

from tests.workflow.conftest import cli_env, train_cli


def test_help_names_the_stages_and_groups_and_hides_the_recipes(tmp_path):
    proc = train_cli(["--help"], cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout
    assert text.startswith("metaft: meta-learning followed by supervised fine-tuning")
    for stage in ("--config-name eval ckpt_path=", "--config-name finetune meta_ckpt="):
        assert stage in text
    groups = dict(line.strip().split(": ", 1) for line in text.splitlines() if line.startswith("  ") and ": " in line
                  and line.strip().split(": ", 1)[0].isidentifier())
    assert {"maml", "protonet", "reptile"} <= set(groups["algorithm"].split(", "))
    assert {"omniglot", "sinusoid"} <= set(groups["dataset"].split(", "))
    assert {"conv4", "mlp"} <= set(groups["model"].split(", "))
    assert "trainer.max_steps=3000" in text and "paths.data_dir=DIR" in text
    assert "recipe" not in text and "is powered by Hydra" not in text
    assert not (tmp_path / "outputs").exists()


def test_module_commands_start_without_warnings(tmp_path):
    """The documented `python -m` commands print their help and nothing on stderr (runpy warns when
    a package imports the module it is asked to run)."""
    for module in ("metaft.data.omniglot.runs", "metaft.report", "metaft.compare", "metaft.study"):
        proc = subprocess.run([sys.executable, "-m", module, "--help"], cwd=tmp_path, env=cli_env(),
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and proc.stdout.strip(), (module, proc.stderr[-2000:])
        assert "Warning" not in proc.stderr, (module, proc.stderr[-2000:])
