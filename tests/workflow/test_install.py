"""An installed metaft (``pip install .``, not editable) runs from any directory: the configs come
with the package (``metaft.conf``), the ``metaft`` console script is train.py's command.

The install and its runs are slow (``pytest -m slow tests/workflow/test_install.py``); the wheel's
contents are checked in the default run.
The new environment reuses this one's packages (torch, Lightning, Hydra) through a ``.pth`` file,
so nothing is downloaded; metaft itself comes from the wheel built from this working tree."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.workflow.conftest import ROOT


def working_tree_copy(dest: Path) -> Path:
    """The files a clone of this checkout would have, with this working tree's changes (links kept)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout: nothing to copy as a clean clone")
    for name in filter(None, listed.stdout.split("\0")):
        src, dst = ROOT / name, dest / name
        if not src.is_symlink() and not src.is_file():
            continue  # deleted in the working tree
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), dst)
        else:
            shutil.copy2(src, dst)
    return dest


def new_environment(where: Path) -> Path:
    """A fresh virtual environment that sees this one's packages but not this checkout's sources."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    python = where / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # A path listed in a .pth file is added as it is: the .pth files inside it (this checkout's
    # editable install among them) are not read, so `import metaft` finds only the installed copy.
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(site) / "reused_packages.pth").write_text("\n".join(sorted(ours)) + "\n")
    return python


def test_a_checkout_reads_its_conf_as_the_package_metaft_conf():
    """src/metaft/conf links to conf/: pkg://metaft.conf is the files people edit."""
    from importlib.resources import files

    from metaft.runtime.paths import conf_dir

    assert Path(str(files("metaft.conf") / "train.yaml")).resolve() == (ROOT / "conf" / "train.yaml").resolve()
    assert conf_dir().resolve() == (ROOT / "conf").resolve()


def test_the_wheel_holds_every_config(tmp_path):
    """Every YAML file of conf/ is in the wheel, under metaft/conf/, with the console script."""
    import zipfile

    clone = working_tree_copy(tmp_path / "clone")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                            "-w", str(tmp_path / "wheel"), str(clone)], cwd=tmp_path, capture_output=True, text=True,
                           timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "wheel").glob("metaft-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = {f"metaft/conf/{p.relative_to(clone / 'conf').as_posix()}" for p in (clone / "conf").rglob("*.yaml")}
    assert wanted and wanted <= names, sorted(wanted - names)
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "metaft = metaft.cli:run" in zipfile.ZipFile(wheel).read(entry).decode()


@pytest.mark.slow
def test_pip_install_then_train_eval_and_fine_tune_from_another_directory(tmp_path):
    clone = working_tree_copy(tmp_path / "clone")
    python = new_environment(tmp_path / "venv")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "METAFT_ROOT")}
    env["OMP_NUM_THREADS"] = "1"
    install = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                              "--ignore-installed", "-q", str(clone)], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run([str(python), "-c", "import metaft, metaft.conf; print(metaft.__file__)"], cwd=work,
                           env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(tmp_path / "venv"), where  # the installed copy, not the checkout
    metaft = python.parent / ("metaft.exe" if os.name == "nt" else "metaft")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(metaft), *args], cwd=work, env=env, capture_output=True, text=True, timeout=600)

    short = ["trainer.val_check_interval=10", "dataset.val_episodes=10", "dataset.test_episodes=10", "progress=log"]
    train = run("trainer.max_steps=20", *short, "hydra.run.dir=outputs/train")
    assert train.returncode == 0, train.stderr[-3000:]
    results = json.loads((work / "outputs" / "train" / "results.json").read_text())
    assert "test/mse" in results and (work / "outputs" / "train" / "checkpoints" / "best.ckpt").is_file()
    ev = run("--config-name", "eval", "ckpt_path=outputs/train", "dataset.test_episodes=10", "hydra.run.dir=outputs/eval")
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert json.loads((work / "outputs" / "eval" / "results.json").read_text())["test/mse"] == results["test/mse"]
    ft = run("--config-name", "finetune", "meta_ckpt=outputs/train", "trainer.max_steps=10", "trainer.val_check_interval=5",
             "logger=csv", "hydra.run.dir=outputs/finetune")
    assert ft.returncode == 0, ft.stderr[-3000:]
    assert "test/mse" in json.loads((work / "outputs" / "finetune" / "results.json").read_text())
    assert (work / "outputs" / "finetune" / "csv" / "metrics.csv").is_file()
    # The installed copy checks command lines against its own configs before anything runs.
    typo = run("trainer.max_step=20")
    assert typo.returncode == 1 and "did you mean trainer.max_steps?" in typo.stderr
    helped = run("--help")
    assert helped.returncode == 0 and "logger: csv, mlflow, none, tensorboard, wandb" in helped.stdout
    # The study from the installed copy: its presets composed from the package, its output and its
    # stage-1 runs in the directory it is started from.
    study = subprocess.run([str(python), "-c", "from metaft.study import driver, stage1; "
                            "cfg = driver.load_config('omniglot_cpu'); print(list(cfg.inits)); "
                            "print(driver.output_dir(cfg, None)); print(stage1.package_parent())"],
                           cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert study.returncode == 0, study.stderr[-3000:]
    inits, out, package = study.stdout.split("\n")[:3]
    from metaft.study.driver import load_config

    assert inits == str(list(load_config("omniglot_cpu").inits))  # the preset's own, not the full study's
    assert Path(out).parent == work / "outputs" / "study" / "omniglot_cpu"
    assert Path(package).is_relative_to(tmp_path / "venv")
