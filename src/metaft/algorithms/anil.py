"""ANIL (Raghu et al. 2020): MAML applied to the head only."""
from typing import Any

from metaft.algorithms.gradient import GradientLearner


class ANIL(GradientLearner):
    """Almost No Inner Loop: the body is meta-learned but never adapted per task."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.pop("adapt_head_only", None)
        super().__init__(**{**kwargs, "adapt": "head"})
