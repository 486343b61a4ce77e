"""Project hygiene the test suite depends on: every third-party module the tests import is a
declared dependency (``dependencies`` or the ``dev`` extra), and data-dependent tests cannot pass
silently in CI."""
from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOCAL = {"metaft", "tests", "benchmarks", "hydra_plugins", "conftest"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _declared() -> set[str]:
    """Distributions named in dependencies and the dev extra (and the extras it pulls in)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    names, todo = {_name(r) for r in project["dependencies"]}, list(extras["dev"])
    while todo:
        req = todo.pop()
        m = re.match(r"metaft\[(\w+)\]", req)
        if m:
            todo += extras[m.group(1)]
        else:
            names.add(_name(req))
    return names


def _test_imports() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in (ROOT / "tests").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module]
            else:
                continue
            for m in mods:
                found.setdefault(m.split(".")[0], path)
    # pytest.importorskip("scipy.stats") and friends are imports too.
    for path in (ROOT / "tests").rglob("*.py"):
        for m in re.findall(r"importorskip\(\"([\w.]+)\"", path.read_text()):
            found.setdefault(m.split(".")[0], path)
    return found


def test_every_module_the_tests_import_is_declared():
    declared, dists = _declared(), packages_distributions()
    missing = []
    for module, path in sorted(_test_imports().items()):
        if module in LOCAL or module in sys.stdlib_module_names:
            continue
        names = {d.lower().replace("_", "-") for d in dists.get(module, [module])}
        if not names & declared:
            missing.append(f"{module} ({path.relative_to(ROOT)}; distribution {', '.join(sorted(names))})")
    assert not missing, "imported by tests but not declared in pyproject.toml (dev extra): " + "; ".join(missing)


class _Item:
    def __init__(self, path: Path) -> None:
        self.mark = pytest.mark.needs_data(path, "Omniglot data").mark

    def get_closest_marker(self, name: str):
        return self.mark if name == "needs_data" else None


def test_missing_data_skips_locally_and_fails_in_ci(tmp_path, monkeypatch):
    from tests.conftest import pytest_runtest_setup

    item = _Item(tmp_path / "absent")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no Omniglot data at .*absent"):
        pytest_runtest_setup(item)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        pytest_runtest_setup(item)
    pytest_runtest_setup(_Item(tmp_path))  # present: runs
