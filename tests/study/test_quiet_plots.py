"""The study's figures draw a legend only on panels with labelled lines: a panel without a
comparison (no meta-learned or no pre-trained init) made matplotlib warn "No artists with labels found"."""
from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from metaft.study.analysis import _legend  # noqa: E402


def test_a_panel_without_labelled_lines_gets_no_legend_and_no_warning():
    fig, (empty, drawn) = plt.subplots(1, 2)
    empty.axhline(0, color="k")
    drawn.plot([0, 1], [1, 2], label="maml")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _legend(empty)
        _legend(drawn)
    assert empty.get_legend() is None
    assert [t.get_text() for t in drawn.get_legend().get_texts()] == ["maml"]
    with warnings.catch_warnings(record=True) as caught:  # what a plain legend() did on the empty panel
        warnings.simplefilter("always")
        empty.legend()
    assert any("No artists with labels found" in str(w.message) for w in caught)
    plt.close(fig)
