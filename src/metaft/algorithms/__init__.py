from metaft.algorithms.anil import ANIL
from metaft.algorithms.base import MetaLearner, NonFiniteLossError
from metaft.algorithms.inner_loop import adapt
from metaft.algorithms.maml import MAML
from metaft.algorithms.metasgd import MetaSGD
from metaft.algorithms.reptile import Reptile

__all__ = ["ANIL", "MAML", "MetaLearner", "MetaSGD", "NonFiniteLossError", "Reptile", "adapt"]
