"""Code asks what a class declares, never what it is called: no module of ``src/metaft``
compares a class's name (``type(x).__name__ == ...``), a class name or class path string
(``== "OmniglotDataModule"``, ``"Omniglot" in path``) or a config's ``_target_`` with anything.
Read from the source with ``ast``."""
from __future__ import annotations

import ast
from pathlib import Path

import metaft

SRC = Path(metaft.__file__).parent


def class_names(root: Path = SRC) -> set[str]:
    """Every class defined in metaft, by name."""
    return {node.name for path in root.rglob("*.py") for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.ClassDef)}


def _strings(side: ast.expr) -> list[str]:
    values = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
    return [v.value for v in values if isinstance(v, ast.Constant) and isinstance(v.value, str)]


def _names_a_class(text: str, classes: set[str]) -> bool:
    """A class name, a dotted path ending in one, or a capitalised piece of one (``"Omniglot"``)."""
    last = text.rsplit(".", 1)[-1]
    if last in classes:
        return True
    return last[:1].isupper() and last.isidentifier() and any(last in c for c in classes)


# Calls that turn a ``_target_`` into the class it names, to be asked what it declares.
RESOLVERS = ("get_class", "get_method", "get_object", "_locate", "configured_class")


def _reads_class(side: ast.expr) -> bool:
    """``x.__name__`` / ``x.__qualname__`` (a class's name) or a config's ``_target_`` (its value,
    not resolved to a class: ``"_target_" in cfg`` asks whether a config builds something)."""
    if isinstance(side, ast.Constant):
        return False
    resolved = {id(n) for call in ast.walk(side) if isinstance(call, ast.Call)
                and getattr(call.func, "id", getattr(call.func, "attr", None)) in RESOLVERS for n in ast.walk(call)}
    for node in ast.walk(side):
        if id(node) in resolved:
            continue
        if isinstance(node, ast.Attribute) and node.attr in ("__name__", "__qualname__", "_target_"):
            return True
        if isinstance(node, ast.Constant) and node.value == "_target_":  # cfg["_target_"], cfg.get("_target_")
            return True
    return False


def class_name_comparisons(source: str, classes: set[str]) -> list[int]:
    """Lines comparing a class's name, a class name or path string, or a ``_target_``.

    A module's ``__getattr__`` (PEP 562: names imported on first use) is left out: the string it
    compares is the attribute asked for, not the class of an object."""
    tree = ast.parse(source)
    skipped = {id(n) for f in tree.body if isinstance(f, ast.FunctionDef) and f.name == "__getattr__"
               for n in ast.walk(f)}
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare) or id(node) in skipped:
            continue
        sides = [node.left, *node.comparators]
        if any(_reads_class(s) or any(_names_a_class(t, classes) for t in _strings(s)) for s in sides):
            lines.append(node.lineno)
    return lines


def test_the_finder_sees_a_comparison():
    classes = {"OmniglotDataModule", "SinusoidDataModule"}
    source = "\n".join([
        'if kind == "OmniglotDataModule": pass',              # 1: a class name
        'x = kind in ("", "SinusoidDataModule")',             # 2: among others
        'x = "Omniglot" in str(cfg.dataset)',                 # 3: a piece of one
        'x = cfg["_target_"] == t',                           # 4: a config's target
        'x = cfg.get("_target_", "").endswith(t) == True',    # 5
        'x = type(v).__name__ == "ListConfig"',               # 6: a class's name
        'x = t == "metaft.data.SinusoidDataModule"',          # 7: a class path
        'x = name == "omniglot"',                             # not a class: a dataset name
        'if __name__ == "__main__": pass',                    # a module's name
        'def __getattr__(name):\n    if name == "OmniglotDataModule": pass',
        'kind = "OmniglotDataModule"',                        # named, not compared
        'x = "_target_" in node',                             # whether a config builds something
        'x = get_class(cfg._target_).task == t',              # the class asked what it declares
    ])
    assert class_name_comparisons(source, classes) == [1, 2, 3, 4, 5, 6, 7]


def test_no_module_compares_class_names():
    classes = class_names()
    assert "OmniglotDataModule" in classes and "FineTuner" in classes
    found = {str(p.relative_to(SRC)): class_name_comparisons(p.read_text(), classes) for p in SRC.rglob("*.py")}
    assert {name: lines for name, lines in found.items() if lines} == {}
