"""paths.data_dir: the project's own data/ in a fresh clone, the shared copy where there is one."""
from __future__ import annotations

from metaft.runtime.paths import default_data_dir


def test_data_dir_prefers_the_projects_own_folder_then_the_shared_one(tmp_path, monkeypatch):
    project = tmp_path / "clone"
    project.mkdir()
    monkeypatch.chdir(project)
    assert default_data_dir() == "data"  # a fresh clone alone: downloads go into the project
    (tmp_path / "shared" / "data").mkdir(parents=True)
    assert default_data_dir() == "../shared/data"
    (project / "data").mkdir()
    assert default_data_dir() == "data"


def test_the_config_resolves_it_unless_the_environment_names_one(run_config, tmp_path, monkeypatch):
    monkeypatch.delenv("METAFT_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert run_config("train", ["dataset=omniglot"]).dataset.data_dir == "data/omniglot"
    monkeypatch.setenv("METAFT_DATA_DIR", "/elsewhere")
    assert run_config("train", ["dataset=omniglot"]).dataset.data_dir == "/elsewhere/omniglot"
