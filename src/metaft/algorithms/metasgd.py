"""Meta-SGD (Li et al. 2017): MAML with a learned step size per parameter entry."""
from typing import Any

from metaft.algorithms.gradient import GradientLearner


class MetaSGD(GradientLearner):
    """The step sizes (``inner_lrs``) start at ``inner_lr`` and are meta-parameters."""

    learns_step_sizes = True

    def __init__(self, **kwargs: Any) -> None:
        kwargs.pop("learn_inner_lr", None)
        super().__init__(learn_inner_lr=True, **kwargs)
