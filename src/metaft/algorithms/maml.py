"""MAML (Finn et al. 2017) and first-order MAML: the base learner as it is.

First-order MAML is ``first_order: true`` (conf/algorithm/fomaml.yaml), not another class.
"""
from metaft.algorithms.base import MetaLearner


class MAML(MetaLearner):
    """Model-Agnostic Meta-Learning: the inner loop over all parameters."""
