"""A learner module stays readable: none under ``algorithms/`` is over 300 lines (split one by idea,
as ``episodic.py``'s outer step and evaluation were, before it grows past that)."""
from __future__ import annotations

from pathlib import Path

import metaft.algorithms

LIMIT = 300


def test_no_learner_module_is_over_the_limit():
    folder = Path(metaft.algorithms.__file__).parent
    sizes = {p.name: len(p.read_text().splitlines()) for p in folder.glob("*.py")}
    assert sizes, "no learner modules found"
    assert {name: n for name, n in sizes.items() if n > LIMIT} == {}
