"""One objective per kind of task: fine-tuning's per-example scores are stage 1's per-task scores
of one-example tasks, and no module but ``core/objective.py`` compares task-kind strings."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import metaft
from metaft.core.objective import Objective

KINDS = ("regression", "classification")


@pytest.mark.parametrize("kind", KINDS)
def test_per_example_scores_are_one_example_tasks(kind):
    torch.manual_seed(0)
    objective = Objective(kind)
    out = torch.randn(7, 1 if objective.regression else 4)
    y = torch.randn(7, 1) if objective.regression else torch.randint(0, 4, (7,))
    tasks_y = y.unsqueeze(1)  # 7 tasks of one example each
    torch.testing.assert_close(objective.per_example_loss(out, y), objective.per_task_loss(out.unsqueeze(1), tasks_y))
    torch.testing.assert_close(objective.per_example_metric(out, y), objective.per_task_metric(out.unsqueeze(1), tasks_y))
    torch.testing.assert_close(objective.per_example_loss(out, y).mean(), objective.loss(out, y))


def test_another_kind_is_refused():
    with pytest.raises(ValueError, match="regression' or 'classification'"):
        Objective("ranking")  # type: ignore[arg-type]


def kind_comparisons(source: str) -> list[int]:
    """Lines comparing something with a task-kind string (``== "regression"``, ``in ("classification", ...)``)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare):
            continue
        for side in [node.left, *node.comparators]:
            values = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
            if any(isinstance(v, ast.Constant) and v.value in KINDS for v in values):
                lines.append(node.lineno)
    return lines


def test_the_finder_sees_a_comparison():
    assert kind_comparisons('if task == "regression":\n    pass\nx = task in ("classification",)\n') == [1, 3]
    assert kind_comparisons('task = "regression"\n') == []


def test_no_module_but_the_objective_compares_task_kinds():
    src = Path(metaft.__file__).parent
    found = {str(p.relative_to(src)): kind_comparisons(p.read_text()) for p in src.rglob("*.py")
             if p.relative_to(src).as_posix() != "core/objective.py"}
    assert {name: lines for name, lines in found.items() if lines} == {}
