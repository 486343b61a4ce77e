"""MAML (Finn et al. 2017) and first-order MAML: the gradient learner as it is.

First-order MAML is ``first_order: true`` (conf/algorithm/fomaml.yaml), not another class.
"""
from metaft.algorithms.gradient import GradientLearner


class MAML(GradientLearner):
    """Model-Agnostic Meta-Learning: the inner loop over all parameters."""
