"""The learners. Each Hydra config in ``conf/algorithm/`` names its class by ``_target_``."""
from metaft.algorithms.anil import ANIL
from metaft.algorithms.episodic import MetaLearner
from metaft.algorithms.feature_head import FeatureHeadLearner
from metaft.algorithms.gradient import GradientLearner
from metaft.algorithms.maml import MAML
from metaft.algorithms.metaoptnet import MetaOptNet
from metaft.algorithms.metasgd import MetaSGD
from metaft.algorithms.pretrain import Pretrain
from metaft.algorithms.protonet import ProtoNet
from metaft.algorithms.reptile import Reptile
from metaft.core.errors import NonFiniteLossError
from metaft.core.inner_loop import adapt

__all__ = ["ANIL", "MAML", "FeatureHeadLearner", "GradientLearner", "MetaLearner", "MetaOptNet", "MetaSGD",
           "NonFiniteLossError", "Pretrain", "ProtoNet", "Reptile", "adapt"]
