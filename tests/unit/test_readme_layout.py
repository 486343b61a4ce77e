"""The README's "## Layout" block names only paths that exist, and names every package of
``src/metaft`` and every module at its top (so a moved or new file shows up here, not in a reader's
failed search).

How the block is read: a line starting in column 0 is an entry whose first word is a path from the
repository root; a line indented by two spaces is an entry under the last entry that is a folder
(``src/metaft/``); deeper-indented lines continue the last entry's description. In a description,
every word with a ``/`` or a file suffix below is a path, relative to the entry's folder or else to the
repository root; ``{a,b}`` expands to each choice and ``<name>`` matches any one path component.
"""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SUFFIXES = (".py", ".yaml", ".md", ".sh", ".toml", ".txt")
_OPEN, _CLOSE = "([\'\"", ")],;:.\'\""


def layout_block(readme: str) -> str:
    """The code block under ``## Layout``."""
    section = readme.split("\n## Layout\n", 1)[1]
    return section.split("```", 2)[1].split("\n", 1)[1]


def _expand(word: str) -> list[str]:
    m = re.search(r"\{([^{}]*)\}", word)
    if not m:
        return [word]
    return [w for choice in m.group(1).split(",") for w in _expand(word[: m.start()] + choice + word[m.end():])]


def _exists(pattern: str, bases: list[Path]) -> bool:
    glob = re.sub(r"<[^<>/]+>", "*", pattern)
    want_dir = glob.endswith("/")
    for base in bases:
        hits = list(base.glob(glob.rstrip("/"))) if "*" in glob else [base / glob.rstrip("/")]
        if any(h.is_dir() if want_dir else h.exists() for h in hits):
            return True
    return False


def entries(block: str, root: Path = ROOT) -> list[tuple[str, str]]:
    """(entry path from ``root``, its description) for every entry of the block."""
    out: list[tuple[str, str]] = []
    parent = ""
    for line in block.splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        if indent in (0, 2):
            path, _, text = line.strip().partition(" ")
            if indent == 0:
                parent = path if path.endswith("/") else parent
            else:
                path = parent + path
            out.append((path, text))
        elif out:
            out[-1] = (out[-1][0], out[-1][1] + " " + line.strip())
    return out


def missing(block: str, root: Path = ROOT) -> list[str]:
    """Every path the block names that does not exist under ``root``, with the entry naming it."""
    problems = []
    for path, text in entries(block, root):
        if not _exists(path, [root]):
            problems.append(f"{path} (an entry)")
        folder = root / path if path.endswith("/") else (root / path).parent
        for word in text.split():
            word = word.lstrip(_OPEN).rstrip(_CLOSE)
            if "/" not in word and not word.endswith(SUFFIXES):
                continue
            for name in _expand(word):
                if not _exists(name, [folder, root]):
                    problems.append(f"{name} (named under {path})")
    return problems


def named_paths(block: str, root: Path = ROOT) -> set[str]:
    return {path.rstrip("/") for path, _ in entries(block, root)}


README = (ROOT / "README.md").read_text()


def test_every_path_the_layout_names_exists():
    block = layout_block(README)
    assert len(entries(block)) >= 15  # the block was found and read, not silently empty
    assert missing(block) == []


def test_the_layout_names_every_package_and_top_level_module():
    named = named_paths(layout_block(README))
    src = ROOT / "src" / "metaft"
    packages = {str(p.parent.relative_to(ROOT)) for p in src.glob("*/__init__.py")}
    modules = {str(p.relative_to(ROOT)) for p in src.glob("*.py") if p.name != "__init__.py"}
    test_dirs = {str(p.parent.relative_to(ROOT)) for p in (ROOT / "tests").glob("*/__init__.py")}
    unnamed = sorted((packages | modules) - named)
    assert not unnamed, f"add to the README's layout: {unnamed}"
    tests_line = next(text for path, text in entries(layout_block(README)) if path == "tests/")
    unnamed_tests = sorted(d for d in test_dirs if f"{Path(d).name}/" not in tests_line)
    assert not unnamed_tests, f"add to the tests/ line of the README's layout: {unnamed_tests}"


def test_a_stale_name_is_found(tmp_path):
    (tmp_path / "src" / "pkg").mkdir(parents=True)
    (tmp_path / "src" / "pkg" / "a.py").write_text("")
    (tmp_path / "conf" / "recipe" / "x").mkdir(parents=True)
    (tmp_path / "conf" / "recipe" / "x" / "y.yaml").write_text("")
    block = ("conf/                    recipe/<experiment>/<algorithm>.yaml, recipe/<experiment>/<gone>.md\n"
             "src/pkg/                 {a,b}.py\n"
             "  a.py                   nothing\n"
             "  sub/                   heads.py (moved),\n"
             "                         and src/pkg/a.py, which is there\n")
    assert missing(block, tmp_path) == ["recipe/<experiment>/<gone>.md (named under conf/)", "b.py (named under src/pkg/)",
                                        "src/pkg/sub/ (an entry)", "heads.py (named under src/pkg/sub/)"]
